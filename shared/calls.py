"""Part of the client: the calls besides submitting, following and changing jobs (staged
files and results, nodes, fair share, notifications, remote access), and `sends`, which
marks each method with its request."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import protocol
from .errors import ValidationError
from .protocol import Op

if TYPE_CHECKING:

    from .models import Node
    from .protocol import (
        GroupReply,
        NodeDict,
        NodeRemovedReply,
        NotifySettingsReply,
        PingReply,
        PurgeReply,
        Request,
        ResultsReply,
        StageReply,
        TokenInfo,
        UsageReply,
        WhoamiReply,
    )

_Method = TypeVar("_Method", bound=Callable[..., Any])


def sends(op: Op) -> Callable[[_Method], _Method]:
    """Marks the client method that sends `op`; tests check every Op has one."""
    def mark(method: _Method) -> _Method:
        # a function's own attribute, which its type does not name
        setattr(method, "op", op)  # noqa: B010
        return method
    return mark



class ClusterCalls:
    """Mixed into Client, which sends the requests."""

    if TYPE_CHECKING:
        def request(self, req: Request) -> Any: ...

    # -- staged files and results ----------------------------------------------------------
    @sends(Op.STAGE_BEGIN)
    def stage_begin(self, files: list[list[Any]]) -> StageReply:
        """Announce an upload, [[path, size, mode], ...]; submit(stage=paths) does it all."""
        return cast("StageReply", self.request(protocol.StageBeginRequest(files=files)))

    @sends(Op.STAGE_PUT)
    def stage_put(self, token: str, index: int, offset: int, data: bytes) -> int:
        """One chunk of an upload's file `index`; the offset after it."""
        from .client_files import b64
        reply = self.request(protocol.StagePutRequest(token=token, index=index, offset=offset,
                                             data=b64(data)))
        return int(reply["offset"])

    @sends(Op.RESULTS)
    def results(self, job_id: int) -> ResultsReply:
        """A job's results: `state` (none, pending, complete, incomplete, purged), `files` as
        [path, size] pairs, `bytes`, and a `note` when the cap cut them or a copy failed."""
        return cast("ResultsReply", self.request(protocol.ResultsRequest(id=job_id)))

    @sends(Op.RESULTS_READ)
    def results_read(self, job_id: int, index: int, offset: int = 0) -> bytes:
        """Bytes of result file `index` from `offset` (empty at its end)."""
        import base64
        reply = self.request(protocol.ResultsReadRequest(id=job_id, index=index, offset=offset))
        return base64.b64decode(reply["data"])

    @sends(Op.PURGE)
    def purge(self, before: float) -> PurgeReply:
        """Admin: remove log copies, results and node scratch directories of jobs that ended
        before `before` (Unix time); their rows and events stay."""
        return cast("PurgeReply", self.request(protocol.PurgeRequest(before=before)))

    # -- cluster ---------------------------------------------------------------------------
    @sends(Op.NODES)
    def nodes(self) -> list[Node]:
        return cast("list[Node]", self.request(protocol.NodesRequest()))

    @sends(Op.NODE_DRAIN)
    def drain(self, name: str) -> NodeDict:
        """Admin: finish running jobs on a node, start no new ones there."""
        return cast("NodeDict", self.request(protocol.NodeDrainRequest(name=name)))

    @sends(Op.NODE_RESUME)
    def resume(self, name: str) -> NodeDict:
        return cast("NodeDict", self.request(protocol.NodeResumeRequest(name=name)))

    @sends(Op.NODE_ADD)
    def add_node(self, **entry: Any) -> NodeDict:
        """Admin: add a node while labqd runs; `entry` takes the keys of a [[node]] entry."""
        return cast("NodeDict", self.request(protocol.NodeAddRequest(node=entry)))

    @sends(Op.NODE_REMOVE)
    def remove_node(self, name: str) -> NodeRemovedReply:
        return cast("NodeRemovedReply", self.request(protocol.NodeRemoveRequest(name=name)))

    # -- fair share ------------------------------------------------------------------------
    @sends(Op.GROUPS)
    def groups(self) -> list[GroupReply]:
        """Every group's share, limits, GPUs in use, decayed usage and fair-share factor."""
        return cast("list[GroupReply]", self.request(protocol.GroupsRequest()))

    @sends(Op.GROUP_SET)
    def set_group(self, group: str, **settings: Any) -> GroupReply:
        """Admin: share=, max_gpus=, max_gpus_by_type={type: n}, users={user: share}."""
        unknown = sorted(set(settings) - set(protocol.GROUP_SETTINGS))
        if unknown:
            raise ValidationError(f"no group setting {unknown[0]!r}; they are "
                                  + ", ".join(protocol.GROUP_SETTINGS), {"field": unknown[0]})
        return cast("GroupReply", self.request(protocol.GroupSetRequest(group=group, **settings)))

    @sends(Op.USAGE)
    def usage(self, days: float = 30, bucket: str = "day") -> UsageReply:
        """GPU-hours per group and user over the last `days`, with fair-share factors, and per
        group and `bucket` ("day", or "hour" over at most 31 days) as a series."""
        return cast("UsageReply", self.request(protocol.UsageRequest(days=days, bucket=bucket)))

    # -- notifications ---------------------------------------------------------------------
    @sends(Op.NOTIFY_SHOW)
    def notify_settings(self, user: str | None = None) -> NotifySettingsReply:
        """Where your notifications go, and the channels labqd's admin enabled."""
        return cast("NotifySettingsReply", self.request(protocol.NotifyShowRequest(user=user)))

    @sends(Op.NOTIFY_SET)
    def set_notify(self, channel: str, value: str | None, *,
                   user: str | None = None) -> NotifySettingsReply:
        """Send your notifications' `channel` ('webhook' or 'mail') to `value`; None clears."""
        return cast("NotifySettingsReply", self.request(protocol.NotifySetRequest(
            channel=channel, value=value, user=user)))

    # -- remote access ---------------------------------------------------------------------
    @sends(Op.TOKEN_CREATE)
    def create_token(self, *, user: str | None = None, days: int | None = None,
                     note: str | None = None) -> TokenInfo:
        """A token for labqd over TCP: yours, or (admins) `user`'s. Its secret is in the
        reply's `token`, this once. Beyond labqd's tokens.max_per_user the oldest go."""
        return cast("TokenInfo", self.request(protocol.TokenCreateRequest(user=user, days=days,
                                                               note=note)))

    @sends(Op.TOKEN_LIST)
    def tokens(self, user: str | None = None) -> list[TokenInfo]:
        return cast("list[TokenInfo]", self.request(protocol.TokenListRequest(user=user)))

    @sends(Op.TOKEN_REVOKE)
    def revoke_token(self, token_id: int) -> TokenInfo:
        return cast("TokenInfo", self.request(protocol.TokenRevokeRequest(id=token_id)))

    @sends(Op.WHOAMI)
    def whoami(self) -> WhoamiReply:
        return cast("WhoamiReply", self.request(protocol.WhoamiRequest()))

    @sends(Op.PING)
    def ping(self) -> PingReply:
        return cast("PingReply", self.request(protocol.PingRequest()))
