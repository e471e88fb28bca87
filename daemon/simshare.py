"""The replay's fairness figure: what fair-share promises, measured per VC, and where a VC fell
short of it.

While a VC has jobs waiting it should hold at least its share of the GPUs in use (its GPUs over
all GPUs), or all it asks for if that is less. Per VC, the GPU time it held over the GPU time it
was so entitled to, both over the time it had jobs waiting; 1.0 or more means it always got its
share. The shortfall (entitled minus held, while it held less) is split by what the VC had
waiting, so that the worst VCs say why: gangs only, or one-node jobs; and by whether it held
nothing at all then.
"""
from __future__ import annotations


class ShareMeter:
    def __init__(self, vcs: dict[str, int]):
        total = sum(vcs.values()) or 1
        self.share = {vc: g / total for vc, g in vcs.items()}
        self.running = dict.fromkeys(vcs, 0)
        self.queued = dict.fromkeys(vcs, 0)  # GPUs asked for by waiting jobs
        self.queued_gangs = dict.fromkeys(vcs, 0)  # of which by waiting gangs
        self.held = dict.fromkeys(vcs, 0.0)
        self.owed = dict.fromkeys(vcs, 0.0)
        self.backlogged = dict.fromkeys(vcs, 0.0)
        self.empty = dict.fromkeys(vcs, 0.0)  # waiting while holding no GPU at all
        self.short_gangs = dict.fromkeys(vcs, 0.0)  # shortfall while only gangs waited
        self.short_one = dict.fromkeys(vcs, 0.0)  # shortfall while one-node jobs waited
        self.last: float | None = None

    def advance(self, t: float, busy: int) -> None:
        """Count the time since the last event, during which nothing changed."""
        if self.last is not None and t > self.last:
            dt = t - self.last
            for vc, q in self.queued.items():
                if q:
                    run = self.running[vc]
                    owed = min(self.share[vc] * busy, run + q)
                    self.held[vc] += run * dt
                    self.owed[vc] += owed * dt
                    self.backlogged[vc] += dt
                    if not run:
                        self.empty[vc] += dt
                    if run < owed:
                        if self.queued_gangs[vc] == q:
                            self.short_gangs[vc] += (owed - run) * dt
                        else:
                            self.short_one[vc] += (owed - run) * dt
        self.last = t

    def waiting(self, vc: str, gpus: int, gang: bool = False) -> None:
        self.queued[vc] += gpus
        if gang:
            self.queued_gangs[vc] += gpus

    def started(self, vc: str, gpus: int, gang: bool = False) -> None:
        self.queued[vc] -= gpus
        if gang:
            self.queued_gangs[vc] -= gpus
        self.running[vc] += gpus

    def ended(self, vc: str, gpus: int) -> None:
        self.running[vc] -= gpus

    def ratios(self) -> dict[str, float]:
        return {vc: self.held[vc] / o for vc, o in sorted(self.owed.items()) if o > 0}

    def detail(self) -> dict[str, dict[str, float]]:
        """Per backlogged VC, worst first: its ratio, the seconds it had jobs waiting (and of
        those, held nothing), and its shortfall in GPU-hours, while gangs alone waited and
        while one-node jobs waited."""
        ratios = self.ratios()
        return {vc: {"ratio": r, "backlogged_s": self.backlogged[vc],
                     "empty_s": self.empty[vc],
                     "short_gang_gpu_h": self.short_gangs[vc] / 3600.0,
                     "short_one_node_gpu_h": self.short_one[vc] / 3600.0}
                for vc, r in sorted(ratios.items(), key=lambda kv: (kv[1], kv[0]))}


def format_worst(name: str, detail: dict[str, dict[str, float]], n: int) -> str:
    lines = [f"{name}: the {n} worst backlogged VCs",
             f"  {'vc':<8} {'share':>6} {'backlogged':>11} {'held none':>10} "
             f"{'short (gangs)':>14} {'short (1-node)':>15}"]
    for vc, d in list(detail.items())[:n]:
        lines.append(f"  {vc:<8} {d['ratio']:>6.2f} {d['backlogged_s']:>10.0f}s "
                     f"{d['empty_s']:>9.0f}s {d['short_gang_gpu_h']:>11.1f} GPU-h "
                     f"{d['short_one_node_gpu_h']:>10.1f} GPU-h")
    return "\n".join(lines)
