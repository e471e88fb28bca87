"""Pure unit tests: request validation, size and duration parsing, the state table."""
import pytest

from labq.errors import NotFound, ValidationError, from_wire
from labq.spec import parse_dependency, submit_request, validate_submit
from labq.states import FINAL, TRANSITIONS, JobState, allowed
from labq.units import format_duration, parse_duration_s, parse_size_mb


@pytest.mark.parametrize("text,mb", [("512M", 512), ("16G", 16384), ("1T", 1048576),
                                     ("1024", 1024), ("1.5G", 1536), ("2GiB", 2048),
                                     ("512k", 0)])
def test_sizes(text, mb):
    assert parse_size_mb(text) == mb


@pytest.mark.parametrize("text,s", [("90", 5400), ("1:30", 90), ("1:00:00", 3600),
                                    ("1-00:00:00", 86400), ("2-3", 2 * 86400 + 3 * 3600),
                                    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                    ("1w", 604800)])
def test_durations(text, s):
    assert parse_duration_s(text) == s


@pytest.mark.parametrize("bad", ["", "abc", "1x", "-5", "1:2:3:4"])
def test_bad_durations_say_what_was_wrong(bad):
    with pytest.raises(ValidationError, match="duration"):
        parse_duration_s(bad)


def test_format_duration():
    assert format_duration(3725) == "01:02:05"
    assert format_duration(90061) == "1-01:01:01"


def test_validate_defaults_and_normalises():
    out = validate_submit({"command": ["python", "train.py"], "dependencies": ["afterok:3", 3,
                                                                              "afterany:4"]})
    assert out["name"] == "python" and out["gpus"] == 0 and out["priority"] == 5
    assert out["dependencies"] == ["afterany:4", "afterok:3"]
    assert out["cwd"] == "/" and out["env"] == {}


@pytest.mark.parametrize("spec,field", [
    ({"command": ["x"], "gpus": -1}, "gpus"),
    ({"command": ["x"], "cpus": 0}, "cpus"),
    ({"command": ["x"], "priority": 0}, "priority"),
    ({"command": ["x"], "name": "a\nb"}, "name"),
    ({"command": ["x"], "gpu_type": "A100; rm -rf"}, "gpu_type"),
    ({"command": ["x"], "hold": "yes"}, "hold"),
    ({"command": ["x"], "extra": 1}, "extra"),
    ({"command": "   "}, "command"),
])
def test_validation_names_the_field(spec, field):
    with pytest.raises(ValidationError) as e:
        validate_submit(spec)
    assert e.value.details["field"] == field


def test_dependency_forms():
    assert parse_dependency("afternotok:5") == ("afternotok", 5)
    assert parse_dependency(7) == ("afterok", 7)
    with pytest.raises(ValidationError):
        parse_dependency("after:0")


def test_submit_request_parses_friendly_values():
    req = submit_request(["x"], memory="2G", time_limit="1h", after=[3, "afterany:4"])
    assert req["memory_mb"] == 2048 and req["time_limit_s"] == 3600
    assert req["dependencies"] == ["afterok:3", "afterany:4"]


def test_state_table():
    assert set(TRANSITIONS) == set(JobState)
    for final in FINAL:
        assert TRANSITIONS[final] == frozenset()
    assert allowed(JobState.PENDING, JobState.RUNNING)
    assert not allowed(JobState.COMPLETED, JobState.RUNNING)
    assert not allowed(JobState.HELD, JobState.RUNNING)


def test_errors_cross_the_wire_typed():
    err = from_wire(NotFound("no job 3", {"id": 3}).to_wire())
    assert isinstance(err, NotFound) and err.details == {"id": 3} and err.code == "NOT_FOUND"


def test_a_job_gets_the_callers_environment_without_the_sessions():
    from labq.connection import exported_env
    env = {"PATH": "/usr/bin", "CUDA_HOME": "/opt/cuda", "TERMINAL": "kitty", "_X": "1",
           "_": "/usr/bin/labq", "SSH_AUTH_SOCK": "/tmp/a", "LABQ_SOCKET": "/s", "TERM": "xterm",
           "DISPLAY": ":0", "PWD": "/home/a", "XDG_RUNTIME_DIR": "/run/user/1",
           "XDG_SESSION": "1", "XDG_SESSION_ID": "3", "KITTY_WINDOW_ID": "2", "TMUX": "x"}
    assert exported_env(env) == {"PATH": "/usr/bin", "CUDA_HOME": "/opt/cuda",
                                 "TERMINAL": "kitty"}


def test_each_submit_exports_os_environ_as_it_is_then(monkeypatch):
    from labq.connection import exported_env
    first = exported_env()
    monkeypatch.setenv("LABQTEST_LR", "0.1")
    assert exported_env()["LABQTEST_LR"] == "0.1"
    monkeypatch.setenv("LABQTEST_LR", "0.2")
    assert exported_env()["LABQTEST_LR"] == "0.2"
    got = exported_env()
    got["MINE"] = "x"  # the caller's copy, not the next submit's
    assert "MINE" not in exported_env()
    monkeypatch.delenv("LABQTEST_LR")
    assert exported_env() == first
