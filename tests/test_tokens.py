"""Tokens and rates in-process, with a fake clock and a real SQLite file: expiry, revocation,
one token per user, failed logins per address, and the submit rate's bucket."""
import pytest
from fakeclock import FakeClock

from labq.daemon.config import ConfigError, load
from labq.daemon.identity import Caller
from labq.daemon.ratelimit import Rate, parse_rate
from labq.daemon.store import Store
from labq.daemon.tokens import Tokens
from labq.errors import (
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    ValidationError,
)

DAY = 86400


ROOT = Caller(uid=0, user="root", group="root", groups=frozenset({"root"}), admin=True)
ALICE = Caller(uid=4242, user="alice", group="alice", groups=frozenset({"alice"}), admin=False)


@pytest.fixture
def parts(tmp_path):
    (tmp_path / "labq.toml").write_text(
        f'[daemon]\ndatabase = "{tmp_path}/labq.db"\nsocket = "{tmp_path}/s"\n'
        '[tokens]\nmax_days = 7\nmax_per_user = 2\nfailed_logins = "3/min"\n')
    cfg = load(tmp_path / "labq.toml")
    clock = FakeClock()
    store = Store(cfg.database)
    yield Tokens(cfg, store, clock), clock, store, cfg
    store.close()


def test_a_token_works_until_it_expires_also_on_an_open_connection(parts):
    tokens, clock, _, _ = parts
    info = tokens.create(ALICE, None, 2, "laptop")
    assert info["user"] == "alice" and info["token"].startswith("labq_")
    row = tokens.authenticate(info["token"], "10.0.0.1")
    assert row["uid"] == 4242
    clock.now += 2 * DAY - 1
    tokens.check(row["id"])
    clock.now += 2
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.check(row["id"])
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.authenticate(info["token"], "10.0.0.1")


def test_only_digests_are_stored_and_a_restart_keeps_the_tokens(parts):
    tokens, clock, store, cfg = parts
    info = tokens.create(ALICE, None, None, None)
    secret = info["token"].split("_", 2)[2]  # labq_ID_SECRET, and a secret may hold "_"
    rows = store.tokens()
    assert len(rows) == 1 and secret not in str(rows)
    again = Tokens(cfg, store, clock)  # labqd restarted
    assert again.authenticate(info["token"], "h")["user"] == "alice"
    assert again.list(ALICE, None)[0]["token"] is None


def test_wrong_and_malformed_tokens_are_refused_alike(parts):
    tokens, _, _, _ = parts
    good = tokens.create(ALICE, None, 1, None)["token"]
    for bad in (good[:-1] + ("A" if good[-1] != "A" else "B"), "labq_999_x", "labq__",
                "nonsense", "", "labq_" + "9" * 40 + "_x"):
        with pytest.raises(Unauthenticated, match="not valid"):
            tokens.authenticate(bad, f"src-{len(bad)}-{bad[:3]}")


def test_many_failed_logins_from_one_address_wait_even_with_the_right_token(parts):
    tokens, clock, _, _ = parts
    good = tokens.create(ALICE, None, 1, None)["token"]
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            tokens.authenticate("labq_1_guess", "10.9.9.9")
    with pytest.raises(RateLimited) as e:
        tokens.authenticate(good, "10.9.9.9")
    assert e.value.details["retry_after"] >= 1
    assert tokens.authenticate(good, "10.1.1.1")["user"] == "alice"  # another address
    clock.now += 60
    assert tokens.authenticate(good, "10.9.9.9")["user"] == "alice"


def test_max_per_user_revokes_the_oldest(parts):
    tokens, clock, _, _ = parts
    first = tokens.create(ALICE, None, 1, None)
    clock.now += 1
    tokens.create(ALICE, None, 1, None)
    clock.now += 1
    third = tokens.create(ALICE, None, 1, None)
    with pytest.raises(Unauthenticated, match="revoked"):
        tokens.authenticate(first["token"], "h")
    assert tokens.authenticate(third["token"], "h")
    states = {t["id"]: t["revoked"] is None for t in tokens.list(ALICE, None)}
    assert sum(states.values()) == 2 and not states[first["id"]]


def test_who_may_create_list_and_revoke(parts):
    tokens, _, _, _ = parts
    with pytest.raises(PermissionDenied):
        tokens.create(ALICE, "root", 1, None)
    with pytest.raises(ValidationError, match="at most 7 days"):
        tokens.create(ALICE, None, 8, None)
    with pytest.raises(NotFound):
        tokens.create(ROOT, "no-such-user-here", 1, None)
    with pytest.raises(PermissionDenied, match="no token acts as root"):
        tokens.create(ROOT, None, 1, None)  # a leaked one would run jobs as root: root stays local
    mine = tokens.create(ROOT, "nobody", 1, None)
    with pytest.raises(NotFound):
        tokens.revoke(ALICE, mine["id"])  # someone else's: as if it did not exist
    with pytest.raises(PermissionDenied):
        tokens.list(ALICE, "root")
    assert tokens.list(ALICE, None) == []
    assert tokens.revoke(ROOT, mine["id"])["revoked"] is not None


def test_rates_are_buckets_that_refill():
    clock = FakeClock()
    rate = Rate(*parse_rate("5/min"), clock=clock)
    for _ in range(5):
        rate.take(1, 1, "submits", "limits.submit_rate")
    with pytest.raises(RateLimited) as e:
        rate.take(1, 1, "submits", "limits.submit_rate")
    assert e.value.details["retry_after"] == 12
    rate.take(2, 5, "submits", "limits.submit_rate")  # another user
    with pytest.raises(QuotaExceeded):
        rate.take(3, 6, "submits", "limits.submit_rate")  # more than ever fits
    clock.now += 12
    rate.take(1, 1, "submits", "limits.submit_rate")
    rate.give_back(1, 1)  # a submit refused for what it asked
    rate.take(1, 1, "submits", "limits.submit_rate")
    with pytest.raises(RateLimited):
        rate.take(1, 1, "submits", "limits.submit_rate")
    rate.give_back(2, 99)  # never more than a full bucket
    for _ in range(5):
        rate.take(2, 1, "submits", "limits.submit_rate")
    with pytest.raises(RateLimited):
        rate.take(2, 1, "submits", "limits.submit_rate")


def test_remote_access_metrics_and_the_submit_rate_are_off_by_default(tmp_path):
    (tmp_path / "c.toml").write_text(f'[daemon]\ndatabase = "{tmp_path}/labq.db"\n')
    cfg = load(tmp_path / "c.toml")
    assert cfg.listen is None and cfg.metrics_listen is None
    assert cfg.limits.get("submit_rate") is None
    store = Store(cfg.database)
    try:
        tokens = Tokens(cfg, store, FakeClock())
        assert (tokens.max_days, tokens.max_per_user) == (30, 1)
    finally:
        store.close()


@pytest.mark.parametrize("text", ["5", "5/fortnight", "0/min", "-1/min", "five/min"])
def test_a_bad_rate_is_refused_with_its_key(tmp_path, text):
    (tmp_path / "c.toml").write_text(f'[limits]\nsubmit_rate = "{text}"\n')
    with pytest.raises(ConfigError, match="limits.submit_rate"):
        load(tmp_path / "c.toml")


@pytest.mark.parametrize("body, key", [
    ('[daemon]\nlisten = "7464"\n', "daemon.listen"),
    ('[daemon]\nlisten = "h:99999"\n', "daemon.listen"),
    ('[daemon]\ntls_cert = "/x.pem"\n', "daemon.tls_key"),
    ('[metrics]\nlisten = "nope"\n', "metrics.listen"),
    ('[tokens]\nmax_days = 0\n', "tokens.max_days"),
])
def test_remote_settings_are_checked(tmp_path, body, key):
    (tmp_path / "c.toml").write_text(body)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path / "c.toml")
