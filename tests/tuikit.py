"""Driving the real TUI app in memory with Textual's pilot."""
from __future__ import annotations

import asyncio
import time


def screen_text(app) -> str:
    """The characters on the terminal, as the user sees them."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


async def until(pilot, predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the screen shows:\n"
                                 + screen_text(pilot.app))
        await pilot.pause(0.05)


def pressing(key: str, first=None):
    """A snapshot's run_before: after `first(pilot)` if given, press `key` and let the
    screen draw."""
    async def run_before(pilot):
        if first is not None:
            await first(pilot)
        await pilot.press(key)
        await pilot.pause(0.2)
    return run_before


def drive(app, scenario, size: tuple[int, int]) -> None:
    """Run `scenario(pilot)` once the app has had its first poll of labqd."""
    async def main():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.me is not None, "the first poll")
            await scenario(pilot)
    asyncio.run(main())


def notes(app) -> str:
    """The toasts shown so far, title and text."""
    return "\n".join(f"{n.title}: {n.message}" for n in app._notifications)


def run_log(size, scenario) -> None:
    """`scenario(pilot, log)` against a bare job log view of the given size."""
    import asyncio

    from textual.app import App

    from labq.tui.logview import JobLog

    class LogApp(App):
        def compose(self):
            yield JobLog(max_lines=10_000, job_id=7)

    async def main():
        app = LogApp()
        async with app.run_test(size=size) as pilot:
            await scenario(pilot, app.query_one(JobLog))
    asyncio.run(main())
