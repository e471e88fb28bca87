"""A clock the test moves by hand, for the parts that take one (labq.daemon.clock.Clock)."""


class FakeClock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now
