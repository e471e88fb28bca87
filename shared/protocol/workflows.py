"""labq.protocol's requests for work that comes in many jobs: arrays and sweeps, batches with
partial success, and the experiments listing. Imported by labq.protocol, which is where
users and labqd find them."""
from __future__ import annotations

from typing import Any, Self, TypedDict

from ..errors import LabqError, from_wire
from ..models import Job
from ..spec import MAX_IDENT, check_plain, validate_submit
from ..sweep import MAX_TASKS, check_params, parse_array
from .args import arg_error, check_text
from .base import Op, Request


class ExperimentReply(TypedDict):
    name: str
    owner: str
    counts: dict[str, int]  # jobs by state
    total: int
    first_submit: float
    last_end: float | None



class SubmitArrayRequest(Request, op=Op.SUBMIT_ARRAY, reply=list[Job]):
    """One spec, many tasks: an array (`array`, Slurm's syntax) or a sweep (`params`, every
    combination of their values filling `{NAME}` in the command). Refused whole."""
    spec: dict[str, Any]
    array: str | None = None
    params: list[list[Any]] | None = None  # [[NAME, [VALUE, ...]], ...]
    max_running: int | None = None  # as the array's %N
    unwalked = frozenset({"spec"})

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        spec = validate_submit(args.get("spec"))
        array, params = args.get("array"), args.get("params")
        if (array is None) == (params is None):
            raise arg_error("array", "give either an array or params")
        if array is not None:
            parse_array(array)
        else:
            params = [[n, v] for n, v in check_params(params)]
        limit = args.get("max_running")
        if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_TASKS):
            raise arg_error("max_running", f"must be a number of tasks from 1 to {MAX_TASKS}")
        return cls(spec=spec, array=array, params=params, max_running=limit)

    @classmethod
    def read_reply(cls, result: Any) -> Any:
        if type(result) is list:  # from a labqd before schema 12: each job whole
            return [Job.from_dict(r) for r in result]
        return Job.table_rows(result)


class SubmitManyRequest(Request, op=Op.SUBMIT_MANY, reply=dict[str, Any]):
    """Specs queued with partial success: every valid one, in one transaction. `rows`, when
    given, lists each row as the index of its spec, so that rows that are alike are sent and
    checked once. The reply is {fields, shared, vary, results}: one result per row, in
    order, the job's values of the fields in `vary` (the others are in `shared`, in the order
    of `fields`), or {error}. `defaults` (the environment and directory every row shares)
    is sent once and merged under each spec."""
    specs: list[Any]
    defaults: dict[str, Any]
    rows: list[int] | None = None
    unwalked = frozenset({"specs", "defaults"})  # each row is checked on its own

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        specs, defaults = args.get("specs"), args.get("defaults", {})
        if type(specs) is not list or not 1 <= len(specs) <= MAX_TASKS:
            raise arg_error("specs", f"must be a list of 1 to {MAX_TASKS} submit specs")
        if type(defaults) is not dict or set(defaults) - {"env", "cwd"}:
            raise arg_error("defaults", "may hold env and cwd only")
        check_plain(defaults, "defaults")
        rows = args.get("rows")
        if rows is not None:
            n = len(specs)
            if (type(rows) is not list or not 1 <= len(rows) <= MAX_TASKS
                    or any(type(r) is not int or not 0 <= r < n for r in rows)):
                raise arg_error("rows", f"must be a list of 1 to {MAX_TASKS} indices of specs")
        return cls(specs=specs, defaults=defaults, rows=rows)

    @classmethod
    def read_reply(cls, result: Any) -> Any:
        out: list[Job | LabqError] = []
        for row, entry in enumerate(Job.table_rows(result)):
            if isinstance(entry, Job):
                out.append(entry)
            else:
                err = from_wire(entry.get("error") or {})
                err.details["row"] = row
                out.append(err)
        return out


class ExperimentsRequest(Request, op=Op.EXPERIMENTS, reply=list[ExperimentReply]):
    user: str | None = None  # everyone's when None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> Self:
        return cls(user=check_text(args, "user", MAX_IDENT))
