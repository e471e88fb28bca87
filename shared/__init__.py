"""labq: a GPU job queue for research labs.

    import labq
    with labq.connect() as q:
        job = q.submit(["python", "train.py"], gpus=1, name="run-1")
        for chunk in q.follow(job.id):
            print(chunk, end="")
"""
from . import errors
from .client import Client, connect
from .errors import LabqError
from .follow import Detached
from .models import Event, Gpu, Job, Node
from .states import JobState

__all__ = ["Client", "Detached", "Event", "Gpu", "Job", "JobState", "LabqError", "Node", "connect",
           "errors"]
__version__ = "0.1.0"
