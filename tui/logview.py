"""The job view's log widget: a terminal's idea of a line, a true follow/paused state, a
visible mark where old lines were dropped, and search matches highlighted.

Textual's `Log.write` sizes the view before it prunes to `max_lines`, so a few large batches
leave the scroll position past the content and the view blank. This widget keeps its own
lines, prunes first, then sizes and scrolls.
"""
from __future__ import annotations

from bisect import bisect_left

from rich.cells import chop_cells
from rich.highlighter import Highlighter
from rich.text import Text
from textual.binding import Binding
from textual.events import Resize
from textual.geometry import Size
from textual.message import Message
from textual.strip import Strip
from textual.widgets import Log

from labq.text import printable

MATCH_STYLE = "bold black on yellow"


def dropped_mark(count: int, job_id: int | None) -> str:
    where = f"`labq logs {job_id}` prints them" if job_id is not None else "see `labq logs`"
    return f"[labq: {count} earlier lines dropped from this view; {where}]"


class NeedleHighlighter(Highlighter):
    def __init__(self, needle: str) -> None:
        self.needle = needle

    def highlight(self, text: Text) -> None:
        if self.needle:
            text.highlight_words([self.needle], MATCH_STYLE, case_sensitive=False)


class JobLog(Log):
    """Follows the end while `follow` is set: scrolling up (keys or wheel) or jumping to a
    search match pauses it, coming back to the end (G, or scrolling down to it) resumes.
    With `wrap` set, a long line takes as many rows as the width needs instead of scrolling
    sideways."""

    BINDINGS = [
        Binding("j,down", "scroll_down", "Down", show=False),
        Binding("k,up", "scroll_up", "Up", show=False),
        Binding("pagedown,space", "page_down", "Page down", show=False),
        Binding("pageup,b", "page_up", "Page up", show=False),
        Binding("g,home", "scroll_home", "Top", show=False),
    ]

    class FollowChanged(Message):
        def __init__(self, follow: bool) -> None:
            super().__init__()
            self.follow = follow

    def __init__(self, *, max_lines: int, job_id: int | None = None, **kwargs) -> None:
        super().__init__(max_lines=None, highlight=False, **kwargs)
        self.cap = max_lines
        self.job_id = job_id
        self.dropped = 0
        self._follow = True
        self._cursor = 0  # the column a `\r` left the cursor at, in the last line
        self.wrap = False
        # while wrapped: each row on screen as (line, piece), and each line's pieces
        self._rows: list[tuple[int, int]] = []
        self._pieces: list[list[str]] = []
        self._wrap_width = 0

    @property
    def follow(self) -> bool:
        return self._follow

    @follow.setter
    def follow(self, value: bool) -> None:
        if value != self._follow:
            self._follow = value
            self.post_message(self.FollowChanged(value))

    # -- writing ---------------------------------------------------------------------------
    def append(self, text: str) -> None:
        """Write text as a terminal shows it: `\\n` starts a line, `\\r` goes back to the
        start of the line and what follows overwrites it (a progress bar stays one line)."""
        if not text:
            return
        lines = self._lines
        if not lines:
            lines.append("")
            self._cursor = 0
        first_changed = len(lines) - 1
        cursor = self._cursor
        for i, part in enumerate(text.split("\n")):
            if i:
                lines.append("")
                cursor = 0
            for j, piece in enumerate(part.split("\r")):
                if j:
                    cursor = 0
                if piece:
                    line = lines[-1]
                    lines[-1] = line[:cursor] + piece + line[cursor + len(piece):]
                    cursor += len(piece)
        self._cursor = cursor
        width = max((len(line) for line in lines[first_changed:]), default=0)
        self._width = max(self._width, width)
        self._prune()
        if self.wrap:
            self._rewrap(first_changed)
        self._set_virtual_size()
        self._render_line_cache.clear()
        if self._follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        elif self.scroll_y > self.max_scroll_y:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)
        self.refresh()

    def _prune(self) -> None:
        extra = self.line_count - self.cap
        if extra <= 0:
            return
        del self._lines[:extra]
        self.dropped += extra
        if self.wrap:
            extra = sum(len(p) for p in self._pieces[:extra])  # rows, not lines
            self._rewrap(0)
        # the first line says how many came before, so a capped view never looks whole
        self._lines[0] = printable(dropped_mark(self.dropped, self.job_id))
        if not self._follow:  # keep the lines the user is reading in place
            self.scroll_to(y=max(0, self.scroll_y - extra), animate=False, immediate=True)

    # -- wrapping --------------------------------------------------------------------------
    def toggle_wrap(self) -> None:
        line = self._top_line()
        self.wrap = not self.wrap
        self._rows, self._pieces = [], []
        if self.wrap:
            self._rewrap(0)
        self._set_virtual_size()
        self._render_line_cache.clear()
        if self._follow:
            self.scroll_end(animate=False, immediate=True)
        else:  # the line that was at the top stays there
            self.scroll_to(y=self._row_of(line), animate=False, immediate=True)
        self.refresh()

    def _set_virtual_size(self) -> None:
        if self.wrap:
            self.virtual_size = Size(self._wrap_width, len(self._rows))
        else:
            self.virtual_size = Size(self._width, self.line_count)

    def _rewrap(self, start: int) -> None:
        """Cut lines from `start` on into rows of the view's width; earlier lines keep
        theirs, so a follow costs the new lines only."""
        width = max(1, self.scrollable_content_region.width or self.size.width or 80)
        if width != self._wrap_width:
            self._wrap_width, start = width, 0
        del self._pieces[start:]
        self._pieces.extend(chop_cells(line, width) or [""] for line in self._lines[start:])
        keep = bisect_left(self._rows, (start, 0))
        del self._rows[keep:]
        self._rows.extend((i, j) for i in range(start, len(self._pieces))
                          for j in range(len(self._pieces[i])))

    def on_resize(self, event: Resize) -> None:
        if self.wrap and self.scrollable_content_region.width != self._wrap_width:
            self._rewrap(0)
            self._set_virtual_size()
            self._render_line_cache.clear()

    def _row_of(self, line: int) -> int:
        return bisect_left(self._rows, (line, 0)) if self.wrap else line

    def _top_line(self) -> int:
        y = int(self.scroll_y)
        return self._rows[y][0] if self.wrap and y < len(self._rows) else y

    def _render_line(self, y: int, scroll_x: int, width: int) -> Strip:
        if not self.wrap:
            return super()._render_line(y, scroll_x, width)
        if y >= len(self._rows):
            return Strip.blank(width, self.rich_style)
        line, piece = self._rows[y]
        text = Text(self._process_line(self._pieces[line][piece]), no_wrap=True)
        text.stylize(self.rich_style)
        if self.highlight:
            text = self.highlighter(text)
        strip = Strip(text.render(self.app.console), text.cell_len)
        return strip.crop_extend(0, width, self.rich_style).apply_offsets(0, y)

    def set_needle(self, needle: str) -> None:
        self.highlight = bool(needle)
        self.highlighter = NeedleHighlighter(needle)
        self._render_line_cache.clear()
        self.refresh()

    # -- moving ----------------------------------------------------------------------------
    def jump_to_end(self) -> None:
        self.follow = True
        self.scroll_end(animate=False, immediate=True)

    def show_line(self, line: int) -> None:
        self.follow = False
        self.scroll_to(y=max(0, self._row_of(line) - self.size.height // 2), animate=False,
                       immediate=True)

    def action_scroll_up(self) -> None:
        self.follow = False
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self.follow = False
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self.follow = False
        super().action_scroll_home()

    def action_scroll_down(self) -> None:
        super().action_scroll_down()
        self.call_after_refresh(self._maybe_follow)

    def action_page_down(self) -> None:
        super().action_page_down()
        self.call_after_refresh(self._maybe_follow)

    def action_scroll_end(self) -> None:
        self.jump_to_end()

    def on_mouse_scroll_up(self) -> None:
        self.follow = False

    def on_mouse_scroll_down(self) -> None:
        self.call_after_refresh(self._maybe_follow)

    def _maybe_follow(self) -> None:
        if self.is_vertical_scroll_end:
            self.follow = True
