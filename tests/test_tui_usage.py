"""The usage tab's plot: GPU-hours per group per hour over the last day or week (`d`, `w`),
and the fair-share table with each group's share beside its factor. The snapshots draw the
tab's own widget with a week of usage made here (a test cannot wait a week for labqd to
record one); the real app's usage tab is in test_tui_snapshots, and the hourly request as two
users in test_trust."""
import asyncio

import pytest
from textual.app import App
from tuikit import pressing, screen_text

from labq.tui.clock import FrozenClock
from labq.tui.data import Usage
from labq.tui.usage import UsagePlot, UsageView, hourly_series, nice_top

SIZES = pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
UNTIL = 1_700_000_000.0  # 22:13:20 UTC: the current hour began at 22:00
HOUR = UNTIL // 3600 * 3600


def week_of_usage() -> dict:
    series = []
    for h in range(7 * 24):
        start = HOUR - h * 3600
        series.append({"group": "vision", "day": "-", "start": start,
                       "gpu_hours": 4.0 + 3 * ((h // 5) % 3)})
        if h % 24 < 12:
            series.append({"group": "nlp", "day": "-", "start": start,
                           "gpu_hours": 2.0 + (h % 7) / 2})
    return {"since": UNTIL - 7 * 86400, "until": UNTIL, "bucket": "hour", "series": series,
            "groups": [{"group": "nlp", "gpu_hours": 300.0, "share": 1.0, "fairshare": 0.61},
                       {"group": "vision", "gpu_hours": 900.0, "share": 2.0,
                        "fairshare": 0.35}],
            "users": [{"group": "nlp", "user": "ana", "gpu_hours": 300.0, "fairshare": 0.61},
                      {"group": "vision", "user": "bo", "gpu_hours": 900.0,
                       "fairshare": 0.35}]}


class UsageApp(App):
    CSS_PATH = "../tui/app.tcss"

    def compose(self):
        yield UsageView(FrozenClock(), id="usage-view")

    def on_mount(self) -> None:
        view = self.query_one(UsageView)
        view.set_usage(Usage(data=week_of_usage()))
        view.focus()


@SIZES
@pytest.mark.parametrize("key", ["d", "w"], ids=["day", "week"])
def test_usage_plot(snap_compare, size, key):
    assert snap_compare(UsageApp(), terminal_size=size, run_before=pressing(key))


def test_d_and_w_switch_the_range_and_redraw_only_on_a_change():
    async def main():
        app = UsageApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.1)
            text = screen_text(app)
            assert "the last 24 hours" in text and "-18h" in text and "now" in text
            view = app.query_one(UsageView)
            await pilot.press("w")
            await pilot.pause(0.1)
            text = screen_text(app)
            assert "the last 7 days" in text and "-6d" in text and "-18h" not in text
            drawn = view._drawn
            # the next poll's reply differs only in its times: nothing is drawn again
            view.set_usage(Usage(data=dict(week_of_usage(), until=UNTIL + 60)))
            assert view._drawn is drawn
            await pilot.press("d")
            await pilot.pause(0.1)
            assert "the last 24 hours" in screen_text(app)
            view.set_usage(Usage(error="no such request"))
            await pilot.pause(0.1)
            assert "labqd answered: no such request" in screen_text(app)
            assert not app.query_one(UsagePlot).display
    asyncio.run(main())


def test_hours_count_back_from_labqds_current_hour():
    data = {"until": HOUR + 1800, "series": [
        {"group": "a", "start": HOUR, "gpu_hours": 0.5},
        {"group": "a", "start": HOUR - 3600, "gpu_hours": 1.0},
        {"group": "b", "start": HOUR - 24 * 3600, "gpu_hours": 2.0},
        {"group": "b", "start": HOUR - 25 * 3600, "gpu_hours": 9.0}]}  # before the range
    xs, groups = hourly_series(data, 24)
    assert xs[0] == -24 and xs[-1] == 0 and len(xs) == 25
    assert groups["a"][-1] == 0.5 and groups["a"][-2] == 1.0 and sum(groups["a"]) == 1.5
    assert groups["b"][0] == 2.0 and sum(groups["b"]) == 2.0
    assert [nice_top(v) for v in (0, 0.01, 1, 1.5, 3, 7, 12, 450)] == [
        1, 1, 1, 2, 5, 10, 20, 500]
