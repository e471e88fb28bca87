"""The policy's settings: the config file's [scheduler], [limits] and [groups], with the group
settings an admin changed at run time (stored in the database) on top."""
from __future__ import annotations

from typing import Any

from labq.errors import ValidationError

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
                      ("max_age", "max_age_s"), ("default_time_limit", "default_time_limit_s"),
                      ("usage_half_life", "usage_half_life_s"), ("cpu_weight", "cpu_weight"),
                      ("backfill", "backfill")):
        if key in s:
            setattr(pc, attr, s[key])
    pc.cancel_unsatisfiable = s.get("unsatisfiable_dependency", "cancel") == "cancel"
    return pc


def check_group_settings(args: dict[str, Any]) -> dict[str, Any]:
    """Validate an admin's group change: share >= 0, limits >= 0 or None to clear."""
    out: dict[str, Any] = {}
    for key in ("share", "max_gpus"):
        if key in args:
            v = args[key]
            if v is not None and (type(v) not in (int, float) or not 0 <= v <= 1e9 or
                                  (key == "max_gpus" and type(v) is not int)):
                raise ValidationError(f"{key}: must be a non-negative "
                                      f"{'integer' if key == 'max_gpus' else 'number'}",
                                      {"field": key})
            out[key] = v
    for key, kind in (("max_gpus_by_type", int), ("users", (int, float))):
        if key in args:
            v = args[key]
            if type(v) is not dict or any(type(k) is not str or type(x) not in
                                          (kind if isinstance(kind, tuple) else (kind,))
                                          or not 0 <= x <= 1e9 for k, x in v.items()):
                raise ValidationError(f"{key}: must map names to numbers from 0 to 1e9",
                                      {"field": key})
            out[key] = dict(v)
    if not out:
        raise ValidationError("nothing to change: give share, max_gpus, max_gpus_by_type or "
                              "users", {"field": "share"})
    return out
