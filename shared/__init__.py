"""labq: a GPU job queue for research labs.

    import labq
    with labq.connect() as q:
        job = q.submit(["python", "train.py"], gpus=1, name="run-1")
        for chunk in q.follow(job.id):
            print(chunk, end="")
"""
from typing import TYPE_CHECKING, Any

from . import errors
from .client import Client, connect
from .errors import LabqError
from .models import Event, Gpu, Job, Node
from .states import JobState

if TYPE_CHECKING:
    from .follow import Detached


def __getattr__(name: str) -> Any:
    # labq.follow holds what following a job's output needs (signals, threads): a command
    # that only submits does without it
    if name == "Detached":
        from .follow import Detached
        return Detached
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Client", "Detached", "Event", "Gpu", "Job", "JobState", "LabqError", "Node", "connect",
           "errors"]
__version__ = "0.1.0"
