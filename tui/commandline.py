"""`:` command mode, as in k9s and vim: `:nodes`, `:job 42`, `:exp NAME`, `:queue`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from labq.errors import LabqError
from labq.text import printable

if TYPE_CHECKING:
    from .app import LabqApp

TAB_WORDS = {"queue": "queue", "q": "queue", "jobs": "queue", "nodes": "nodes",
             "node": "nodes", "usage": "usage", "experiments": "experiments",
             "exps": "experiments", "admin": "admin"}


def run_command(app: LabqApp, line: str) -> None:
    words = line.strip().lstrip(":").split()
    if not words:
        return
    verb, args = words[0].lower(), words[1:]
    if verb in TAB_WORDS and not args:
        app.action_show_tab(TAB_WORDS[verb])
    elif verb in ("exp", "experiment") and len(args) == 1:
        app.show_experiment(args[0])
    elif verb == "job" and len(args) == 1 and args[0].isdigit():
        open_job(app, int(args[0]))
    elif verb in ("help", "?"):
        app.action_help()
    elif verb in ("quit", "q!"):
        app.exit()
    else:
        app.notify(printable(f"unknown command :{line.strip().lstrip(':')}; try :nodes, "
                             ":usage, :exp NAME, :job ID, :queue, :help"),
                   severity="warning", markup=False)


def open_job(app: LabqApp, job_id: int) -> None:
    job = app.jobs.get(job_id)
    if job is not None:
        app.open_job(job)
        return

    def fetch() -> None:
        try:
            found = app.conn.run(lambda q: q.job(job_id))
        except LabqError as e:
            app.call_from_thread(app.notify, printable(e.message), severity="error",
                                 title=f"no job {job_id}", markup=False)
            return
        app.call_from_thread(app.open_job, found)
    app.run_worker(fetch, thread=True, group="actions")
