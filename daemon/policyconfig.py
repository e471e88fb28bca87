"""The policy's settings: the config file's [scheduler], [limits] and [groups], with the group
settings an admin changed at run time (stored in the database) on top."""
from __future__ import annotations

from .config import Config
from .policy import Limits, PolicyConfig

GROUP_KEYS = {"share", "max_gpus", "max_gpus_by_type", "users"}


def build(cfg: Config, overrides: dict[str, dict]) -> PolicyConfig:
    s, lim = cfg.scheduler, cfg.limits
    groups: dict[str, dict] = {g: dict(v) for g, v in cfg.groups.items()}
    for g, v in overrides.items():
        merged = groups.setdefault(g, {})
        for k, x in v.items():
            if k == "users":
                merged["users"] = {**merged.get("users", {}), **x}
            elif k == "max_gpus_by_type":
                merged[k] = {**merged.get(k, {}), **x}
            else:
                merged[k] = x
    limits = Limits(
        group_gpus={g: v["max_gpus"] for g, v in groups.items() if v.get("max_gpus") is not None},
        group_gpu_type={(g, t): n for g, v in groups.items()
                        for t, n in (v.get("max_gpus_by_type") or {}).items()},
        user_jobs=lim.get("user_max_jobs"), user_gpus=lim.get("user_max_gpus"),
        partition_user_jobs=dict(lim.get("partition_user_max_jobs", {})))
    pc = PolicyConfig(limits=limits,
                      group_shares={g: v["share"] for g, v in groups.items()
                                    if v.get("share") is not None},
                      user_shares={(g, u): sh for g, v in groups.items()
                                   for u, sh in (v.get("users") or {}).items()})
    for key, attr in (("weight_age", "weight_age"), ("weight_fairshare", "weight_fairshare"),
                      ("weight_priority", "weight_priority"), ("weight_size", "weight_size"),
                      ("weight_short", "weight_short"), ("short_step", "short_step"),
                      ("max_age", "max_age_s"), ("default_time_limit", "default_time_limit_s"),
                      ("usage_half_life", "usage_half_life_s"), ("cpu_weight", "cpu_weight"),
                      ("backfill", "backfill"), ("starved_first", "starved_first"),
                      ("starved_reservations", "starved_reservations"),
                      ("preempt_max", "preempt_max"), ("preempt_min_run", "preempt_min_run_s"),
                      ("preempt_max_run", "preempt_max_run_s"),
                      ("preempt_over_share", "preempt_over_share"),
                      ("preempt_share_floor", "preempt_share_floor")):
        if key in s:
            setattr(pc, attr, s[key])
    pc.cancel_unsatisfiable = s.get("unsatisfiable_dependency", "cancel") == "cancel"
    return pc

