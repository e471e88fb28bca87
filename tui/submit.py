"""The submit form (`n`). What the user types goes to client.submit as typed; the client
library or the daemon decide what is valid, and their message is shown under the form."""
from __future__ import annotations

import os

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Input, Label, Static

from labq import Job
from labq.errors import LabqError, ValidationError

from .data import Connection
from .format import plain

# (input id, label, placeholder, client.submit keyword)
FIELDS = (
    ("command", "Command", "shell command, e.g. python train.py --lr 3e-4", None),
    ("name", "Name", "defaults to the program name", "name"),
    ("gpus", "GPUs", "0", "gpus"),
    ("gpu_type", "GPU type", "any, e.g. A100", "gpu_type"),
    ("cpus", "CPUs", "1", "cpus"),
    ("memory", "Memory", "e.g. 32G", "memory"),
    ("time_limit", "Time limit", "e.g. 2h or 1-00:00:00", "time_limit"),
    ("priority", "Priority", "1-10, default 5", "priority"),
    ("after", "After", "job ids or afterany:ID, comma-separated", "after"),
    ("cwd", "Directory", "", "cwd"),
)
INT_FIELDS = ("gpus", "cpus", "priority")
WIDE = ("command", "after", "cwd")
# the daemon names the bad field in error details; map its names to the form's inputs
DETAIL_FIELD = {"gpu_memory_mb": "gpu_type", "memory_mb": "memory", "time_limit_s":
                "time_limit", "dependencies": "after"}


def _int_or_text(text: str) -> int | str:
    """Digits become a number; anything else goes through unchanged, for the daemon to
    reject with its own message."""
    try:
        return int(text)
    except ValueError:
        return text


def form_values(job: Job) -> dict[str, str]:
    """A job's spec as the form's fields, to submit it again or a variant of it."""
    from labq.units import format_duration, format_size_mb

    from .format import command_text
    return {"command": command_text(job), "name": job.name, "gpus": str(job.gpus or ""),
            "gpu_type": job.gpu_type or "", "cpus": str(job.cpus),
            "memory": format_size_mb(job.memory_mb) if job.memory_mb else "",
            "time_limit": format_duration(job.time_limit_s) if job.time_limit_s else "",
            "priority": str(job.priority), "after": "", "cwd": job.cwd or ""}


class SubmitScreen(ModalScreen[Job | None]):
    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("ctrl+s", "submit", "Submit"),
    ]

    def __init__(self, conn: Connection, cwd: str | None = None,
                 template: Job | None = None) -> None:
        """`template`: a job whose spec fills the form (clone / resubmit)."""
        super().__init__()
        self.conn = conn
        self.cwd = cwd or os.getcwd()
        self.values = form_values(template) if template is not None else {"cwd": self.cwd}
        self.title_text = f"Submit a copy of job {template.id}" if template is not None \
            else "Submit a job"

    def compose(self) -> ComposeResult:
        with Vertical(id="submit-dialog"):
            yield Static(plain(self.title_text), id="submit-title")
            with Grid(id="submit-grid"):
                for key, label, placeholder, _ in FIELDS:
                    if key == "after":
                        yield Label("Hold", classes="field-label")
                        yield Checkbox("submit held", id="f-hold")
                    yield Label(label, classes="field-label")
                    yield Input(value=self.values.get(key, ""), placeholder=placeholder,
                                id=f"f-{key}",
                                classes="wide" if key in WIDE else "")
            yield Static("", id="submit-error")
            with Horizontal(id="submit-buttons"):
                yield Button("Submit", variant="primary", id="submit-ok")
                yield Button("Cancel", id="submit-cancel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#f-command", Input).focus()

    def request(self) -> dict:
        """The keyword arguments for client.submit; empty fields keep the defaults."""
        args: dict = {}
        for key, _, _, kw in FIELDS:
            text = self.query_one(f"#f-{key}", Input).value.strip()
            if kw is None or not text:
                continue
            if key in INT_FIELDS:
                args[kw] = _int_or_text(text)
            elif key == "after":
                args[kw] = [_int_or_text(t.strip()) for t in text.split(",") if t.strip()]
            else:
                args[kw] = text
        args["hold"] = self.query_one("#f-hold", Checkbox).value
        return args

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit-ok":
            self.action_submit()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def action_submit(self) -> None:
        command = self.query_one("#f-command", Input).value
        for key, label, _, _ in FIELDS:
            value = self.query_one(f"#f-{key}", Input).value.strip()
            if key in INT_FIELDS and value and not value.isdigit():
                self.show_error(ValidationError(
                    f"{label}: {value!r} is not a whole number", {"field": key}))
                return
        self.query_one("#submit-error", Static).update("submitting…")
        self._send(command, self.request())

    @work(thread=True, exclusive=True)
    def _send(self, command: str, args: dict) -> None:
        try:
            job = self.conn.run(lambda q: q.submit(command, **args))
        except LabqError as e:
            self.app.call_from_thread(self.show_error, e)
            return
        self.app.call_from_thread(self.dismiss, job)

    def show_error(self, error: LabqError) -> None:
        for box in self.query(Input):
            box.remove_class("-invalid")
        field = str(error.details.get("field", ""))
        field = DETAIL_FIELD.get(field, field).split(".")[0]
        if field and self.query(f"#f-{field}"):
            self.query_one(f"#f-{field}", Input).add_class("-invalid")
        self.query_one("#submit-error", Static).update(plain(error.message))

    def action_close(self) -> None:
        self.dismiss(None)
