"""Fair share: the policy's settings (config plus the admins' group changes), the decayed
usage, the group listing and the usage report."""
from __future__ import annotations

import threading
import time
from typing import Any

from labq.errors import PermissionDenied, ValidationError
from labq.states import JobState

from . import policyconfig
from . import store as st
from .accounting import Accounting, usage_report
from .identity import Caller
from .jobtable import JobTable
from .policy.fairshare import factors

S = JobState


class FairShare:
    def __init__(self, cfg, store: st.Store, jobs: JobTable, wake: threading.Event):
        self.cfg = cfg
        self.store = store
        self.jobs = jobs
        self.lock = jobs.lock
        self.wake = wake
        self.group_overrides = store.group_settings()
        self.policy_config = policyconfig.build(cfg, self.group_overrides)
        self.accounting = Accounting(self.policy_config.usage_half_life_s,
                                     self.policy_config.cpu_weight)
        self.accounting.load(store, time.time())

    def set_group(self, caller: Caller, group: Any, changes: dict) -> dict:
        if not caller.admin:
            raise PermissionDenied("group shares and limits are for admins")
        # `changes` is checked by labq.protocol's GroupSetRequest
        with self.lock:
            merged = dict(self.group_overrides.get(group, {}))
            for k, v in changes.items():
                merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
            self.store.save_group_settings(group, merged)
            self.group_overrides[group] = merged
            self.policy_config = policyconfig.build(self.cfg, self.group_overrides)
        self.wake.set()
        return next(g for g in self.groups() if g["group"] == group)

    def groups(self) -> list[dict]:
        with self.lock:
            pc = self.policy_config
            gpus_in_use: dict[str, int] = {}
            pairs = set()
            for j in self.jobs.active.values():
                pairs.add((j["group"], j["owner"]))
                if j["state"] == S.RUNNING.value:
                    gpus_in_use[j["group"]] = gpus_in_use.get(j["group"], 0) + len(
                        j["gpu_indices"])
            names = (set(pc.group_shares) | set(pc.limits.group_gpus) | {g for g, _ in pairs}
                     | set(self.accounting.group_usage) | {g for g, _ in pc.limits.group_gpu_type})
            fs = factors(self.accounting.group_usage, self.accounting.user_usage,
                         pc.group_shares, pc.user_shares, {(g, "") for g in names})
            return [{"group": g, "share": pc.group_shares.get(g, 1.0),
                     "max_gpus": pc.limits.group_gpus.get(g),
                     "max_gpus_by_type": {t: n for (gg, t), n in pc.limits.group_gpu_type.items()
                                          if gg == g},
                     "users": {u: s for (gg, u), s in pc.user_shares.items() if gg == g},
                     "gpus_in_use": gpus_in_use.get(g, 0),
                     "usage": round(self.accounting.group_usage.get(g, 0.0), 3),
                     "fairshare": round(fs[(g, "")], 6)} for g in sorted(names)]

    def usage(self, caller: Caller, days: Any, bucket: str = "day") -> dict:
        if type(days) not in (int, float) or not 0 < days <= 3660:
            raise ValidationError("days: must be a number of days from 1 to 3660",
                                  {"field": "days"})
        now = time.time()
        groups, users, series = usage_report(self.store, now - days * 86400, now,
                                             hourly=bucket == "hour")
        with self.lock:
            pc = self.policy_config
            acc = self.accounting
            pairs = {(u["group"], u["user"]) for u in users} | set(acc.user_usage)
            fs = factors(acc.group_usage, acc.user_usage, pc.group_shares, pc.user_shares,
                         pairs | {(g["group"], "") for g in groups})
        for g in groups:
            g["share"] = pc.group_shares.get(g["group"], 1.0)
            g["fairshare"] = round(fs.get((g["group"], ""), 1.0), 6)
        for u in users:
            u["fairshare"] = round(fs.get((u["group"], u["user"]), 1.0), 6)
        return {"since": now - days * 86400, "until": now, "groups": groups, "users": users,
                "series": series, "bucket": bucket}
