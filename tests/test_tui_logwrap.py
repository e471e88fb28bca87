"""The log view's wrap toggle: a long line takes as many rows as the width needs, wide
(CJK) characters are never cut in half, the 10,000-line cap and its mark still hold, a search
match is shown wherever its line wrapped to, and toggling back restores one row per line."""

import pytest
from tuikit import run_log, screen_text

LONG = "start-" + "abcdefghij" * 30 + "-tail"



@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_wrap_shows_the_whole_of_long_lines_and_toggles_back(size):
    async def scenario(pilot, log):
        log.append(f"{LONG}\n{'漢字' * 100}|\nshort\n")
        await pilot.pause(0.05)
        assert "-tail" not in screen_text(pilot.app)  # cut at the edge, as before
        log.toggle_wrap()
        await pilot.pause(0.05)
        shown = screen_text(pilot.app)
        assert "start-" in shown and "-tail" in shown and "short" in shown
        assert "漢字漢字" in shown and "|" in shown
        rows = [r for r in shown.splitlines() if r.strip()]
        assert len(rows) >= 4 and not any("\ufffd" in r for r in rows)
        log.toggle_wrap()
        await pilot.pause(0.05)
        assert "-tail" not in screen_text(pilot.app) and "short" in screen_text(pilot.app)
    run_log(size, scenario)


def test_wrapped_log_keeps_its_cap_follows_and_finds_matches():
    async def scenario(pilot, log):
        log.toggle_wrap()
        log.append("".join(f"{i} {LONG}\n" for i in range(10_050)))
        log.append("the-last-line\n")
        await pilot.pause(0.05)
        shown = screen_text(pilot.app)
        assert log.dropped == 51 and "the-last-line" in shown  # still following the end
        assert log.lines[0].startswith("[labq: 51 earlier lines dropped")
        log.show_line(5000)
        await pilot.pause(0.05)
        assert "5051 start-" in screen_text(pilot.app)
    run_log((80, 24), scenario)
