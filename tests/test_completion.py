"""Shell completion in real bash, zsh and fish, loading the script `labq completion SHELL`
prints, as two Unix users against a real labqd: each is offered their own active jobs only;
with no labqd, completion offers nothing, says nothing and returns at once."""
import shutil
import socket as socketmod
import subprocess
import tempfile
from pathlib import Path

import pytest
from daemonproc import Daemon
from sshnodes import run_as
from userkit import User, cli_venv

ALICE, BOB = "labqtest", "labqtest2"

# each shell loads the script, completes `labq LINE` and prints the candidates one a line
BASH = r'''eval "$(labq completion bash)"
complete -p labq >/dev/null || exit 3
read -ra COMP_WORDS <<< "labq $1"
[[ "$1" == *" " || -z "$1" ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_labq_complete
printf '%s\n' "${COMPREPLY[@]}"
'''
# zsh's completion widgets need a terminal; its compadd is replaced by one that prints
ZSH = r'''compdef() { :; }
eval "$(labq completion zsh)"
compadd() { while [[ $1 != -- ]]; do shift; done; shift; print -rl -- "$@"; }
words=(labq ${=1})
[[ "$1" == *" " || -z "$1" ]] && words+=("")
CURRENT=${#words}
_labq
'''
FISH = r'''labq completion fish | source
complete -C "labq $argv[1]" | string replace -r '\t.*' ''
exit 0
'''
SHELLS = {"bash": ["bash", "-c", BASH, "bash"], "zsh": ["zsh", "-fc", ZSH, "zsh"],
          "fish": ["fish", "-c", FISH]}


@pytest.fixture(scope="module")
def venv():
    return cli_venv()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("completion"),
               {"daemon": {"local_node": True, "socket_mode": "0666"},
                "groups": {"vision": {"share": 2}}})
    with d.start(wait_nodes=1):
        yield d


def complete(user: User, shell: str, line: str, socket=None) -> list[str]:
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed: .ci/run installs it")
    env = user.env() if socket is None else dict(user.env(), LABQ_SOCKET=str(socket))
    r = run_as(user.name, SHELLS[shell] + [line], env=env, cwd=str(user.home), timeout=30)
    assert r.returncode == 0 and r.stderr == "", (shell, line, r.stderr)
    return [x for x in r.stdout.splitlines() if x]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completes_commands_options_and_choices_from_the_parser(daemon, venv, shell):
    alice = User(ALICE, venv, daemon.socket)
    assert {"submit", "show", "logs", "cancel", "notify", "completion"} <= \
        set(complete(alice, shell, ""))
    assert "__complete" not in complete(alice, shell, "")
    assert set(complete(alice, shell, "sh")) == {"show"}
    assert {"--gpus", "--gpu-type", "--gpu-mem"} <= set(complete(alice, shell, "submit --gp"))
    assert set(complete(alice, shell, "submit --notify ")) == {"end", "fail", "all", "none"}
    assert set(complete(alice, shell, "node ")) == {"drain", "resume", "add", "remove"}
    assert set(complete(alice, shell, "completion ")) == {"bash", "zsh", "fish"}


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_job_ids_are_the_callers_active_jobs_only(daemon, venv, shell):
    alice, bob = User(ALICE, venv, daemon.socket), User(BOB, venv, daemon.socket)
    a = [alice.ok("submit", "--hold", "--", "true").strip() for _ in range(2)]
    b = bob.ok("submit", "--hold", "--", "true").strip()
    ended = alice.ok("submit", "--", "true").strip()
    alice.labq("wait", ended)
    try:
        for verb in ("show ", "cancel ", "logs "):
            assert set(complete(alice, shell, verb)) == set(a), verb
            assert set(complete(bob, shell, verb)) == {b}, verb
        assert set(complete(alice, shell, f"cancel {a[0]} ")) == set(a)
        nodes = {n.name for n in daemon.client().nodes()}
        assert set(complete(bob, shell, "node drain ")) == nodes
        assert "vision" in complete(bob, shell, "group set ")
    finally:
        alice.ok("cancel", *a)
        bob.ok("cancel", b)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_without_a_daemon_completion_offers_nothing_and_says_nothing(venv, shell, tmp_path):
    alice = User(ALICE, venv)
    gone = tmp_path / "no-such.sock"
    assert complete(alice, shell, "show ", socket=gone) == []
    assert complete(alice, shell, "cancel 1 ", socket=gone) == []
    # the static parts still complete
    assert complete(alice, shell, "sh", socket=gone) == ["show"]


def test_the_hidden_command_returns_at_once_and_prints_nothing_without_a_daemon(venv):
    alice = User(ALICE, venv)
    # a socket that accepts and never answers, as a hung labqd: completion gives up on it
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))
    base.chmod(0o755)
    path = base / "silent.sock"
    listening = socketmod.socket(socketmod.AF_UNIX)
    listening.bind(str(path))
    listening.listen(8)
    path.chmod(0o777)
    for sock in (base / "absent.sock", path):
        r = subprocess.run(["setpriv", f"--reuid={alice.uid}", f"--regid={alice.gid}",
                            "--init-groups", str(venv / "bin" / "labq"), "__complete", "show",
                            ""], env=dict(alice.env(), LABQ_SOCKET=str(sock)),
                           capture_output=True, text=True, timeout=15)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), sock
    listening.close()
    shutil.rmtree(base)
