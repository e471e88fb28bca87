"""What a `labq` command loads before it does its work: only what that command needs. Each
check runs a fresh interpreter, since this one has imported everything already."""
import importlib
import json
import os
import subprocess
import sys

import labq.protocol
from labq.cli import build_parser, command_word
from labq.protocol import REQUESTS, Op

KINDS = ("cluster", "files", "jobs", "notify", "tokens", "workflows")


def loaded_by(code: str) -> set[str]:
    """The modules `code` imports, past those the interpreter starts with."""
    probe = ("import sys\nbefore = set(sys.modules)\n" + code
             + "\nprint(__import__('json').dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_importing_the_cli_loads_no_request_kind_and_nothing_only_some_commands_need():
    new = loaded_by("import labq.cli")
    assert "labq.protocol.base" in new
    assert not {f"labq.protocol.{k}" for k in KINDS} & new
    # following a job's output, remote access, user config and file commands load their own
    assert not {"labq.follow", "labq.remote", "labq.client_files", "labq.stagefiles",
                "labq.sweep"} & new
    assert not {"tomllib", "socket", "threading", "signal", "shutil", "hashlib", "ssl",
                "datetime", "zipfile", "pathlib"} & new


def test_a_request_type_loads_its_own_kind_only():
    new = loaded_by("from labq.protocol import SubmitRequest")
    assert "labq.protocol.jobs" in new
    assert not {f"labq.protocol.{k}" for k in KINDS if k != "jobs"} & new


def test_every_request_type_is_there_for_who_asks_for_all():
    assert set(REQUESTS) == set(Op)
    for name in labq.protocol.__all__:
        assert getattr(labq.protocol, name) is not None
    assert "NoSuchRequest" not in dir(labq.protocol)
    try:
        labq.protocol.NoSuchRequest  # noqa: B018
    except AttributeError as e:
        assert "NoSuchRequest" in str(e)
    else:
        raise AssertionError("an unknown name was found")


def test_the_package_lists_every_class_and_function_of_each_kind():
    for kind in KINDS:
        module = importlib.import_module(f"labq.protocol.{kind}")
        defined = {name for name, v in vars(module).items() if not name.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__}
        assert defined <= set(labq.protocol._NAMES[kind]), kind
        for name in labq.protocol._NAMES[kind]:
            assert getattr(labq.protocol, name) is getattr(module, name)


def test_a_request_type_becomes_a_frozen_dataclass_when_first_used():
    code = ("import dataclasses\nfrom labq.protocol import HoldRequest\n"
            "before = '__dataclass_fields__' in HoldRequest.__dict__\n"
            "r = HoldRequest(ids=[1])\n"
            "try:\n    r.ids = [2]\n    frozen = False\n"
            "except dataclasses.FrozenInstanceError:\n    frozen = True\n"
            "print(before, repr(r), r == HoldRequest(ids=[1]), frozen,"
            " [f.name for f in dataclasses.fields(HoldRequest)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ("False HoldRequest(ids=[1], experiment=None) True True "
                   "['ids', 'experiment']")


def test_fields_alone_complete_a_request_type():
    code = ("import dataclasses\nfrom labq.protocol import WaitRequest\n"
            "print(dataclasses.is_dataclass(WaitRequest),"
            " [f.name for f in dataclasses.fields(WaitRequest)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "True ['ids', 'timeout', 'experiment']"


def test_the_command_word_is_found_past_the_global_options():
    assert command_word(["submit", "--hold", "--", "true"]) == "submit"
    assert command_word(["--socket", "/s", "run", "--", "ls"]) == "run"
    assert command_word(["--url=labq://h:1", "ls"]) == "ls"
    # help, an abbreviated option or nothing at all: every command's parser is built
    assert command_word(["--help"]) is None
    assert command_word(["--sock", "/s", "ls"]) is None
    assert command_word([]) is None


def test_one_commands_parser_parses_as_the_whole_one_does():
    whole, one = build_parser(), build_parser(only="submit")
    argv = ["--socket", "/s", "submit", "--hold", "--gpus", "2", "--", "python", "x.py"]
    a, b = whole.parse_args(argv), one.parse_args(argv)
    assert {k: v for k, v in vars(a).items() if k != "fn"} == \
        {k: v for k, v in vars(b).items() if k != "fn"}
    assert a.fn is b.fn
    assert set(one._subparsers._group_actions[0].choices) == {"submit"}
    assert "notify" in whole._subparsers._group_actions[0].choices
    # a word that names no command gets argparse's message listing every command
    assert "notify" in build_parser(only="nosuch")._subparsers._group_actions[0].choices


def test_help_lists_every_command_and_a_typo_names_them():
    help_ = subprocess.run([sys.executable, "-m", "labq.cli", "--help"], capture_output=True,
                           text=True, env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert help_.returncode == 0
    for name in ("submit", "run", "ls", "notify", "token", "purge", "completion"):
        assert name in help_.stdout
    typo = subprocess.run([sys.executable, "-m", "labq.cli", "sumbit", "--", "true"],
                          capture_output=True, text=True)
    assert typo.returncode == 2
    assert "invalid choice: 'sumbit'" in typo.stderr and "'submit'" in typo.stderr


def test_finding_ones_own_daemon_and_the_saved_login_needs_no_pathlib(tmp_path):
    (tmp_path / "run" / "labq").mkdir(parents=True)
    (tmp_path / "run" / "labq" / "labq.sock").write_text("")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    code = ("import sys\nbefore = set(sys.modules)\nfrom labq.client import default_address\n"
            "print(default_address())\n"
            "print(sorted({'pathlib', 'tomllib'} & (set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    assert out[0] == str(tmp_path / "run" / "labq" / "labq.sock")
    # pathlib may come with the interpreter itself (an editable install's finder); tomllib
    # is only for a user who has logged in somewhere
    assert "tomllib" not in out[1]
    # without a daemon of one's own, the state directory's socket, else the system daemon's
    env.pop("XDG_RUNTIME_DIR")
    (tmp_path / "home" / ".local" / "state" / "labq").mkdir(parents=True)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    assert out[0] == "/run/labq/labq.sock"
    (tmp_path / "home" / ".local" / "state" / "labq" / "labq.sock").write_text("")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    system_first = os.geteuid() == 0 and os.path.exists("/run/labq/labq.sock")
    assert out[0] == ("/run/labq/labq.sock" if system_first else
                      str(tmp_path / "home" / ".local" / "state" / "labq" / "labq.sock"))
