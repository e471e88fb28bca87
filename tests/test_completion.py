"""Shell completion in real bash, zsh and fish, loading the script `labq completion SHELL`
prints, as two Unix users against a real labqd: each is offered their own active jobs and
experiments only; with no labqd, completion offers nothing, says nothing and returns at once.
The last tests press Tab in each shell in a terminal (tmux), as a user does, and see paths
completed where labq takes a file or directory."""
import itertools
import os
import shutil
import socket as socketmod
import subprocess
import tempfile
from pathlib import Path

import pytest
from daemonproc import Daemon, wait_for
from sshnodes import run_as
from userkit import User, cli_venv

# this module's own accounts: it writes their ~/.config/labq, which tests of other modules,
# run beside these by pytest's workers, would otherwise read
ALICE, BOB = "labqcompl1", "labqcompl2"

# each shell loads the script, completes `labq LINE` and prints the candidates one a line
# bash: the line and the cursor as bash gives them to a completion function; a candidate is
# printed with the text bash keeps before it (the current word up to its last `=` or `:`)
BASH = r'''eval "$(labq completion bash)"
complete -p labq >/dev/null || exit 3
COMP_LINE="labq $1"
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$1" == *" " || -z "$1" ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_labq_complete
cur=${COMP_WORDS[COMP_CWORD]}
keep=$(expr "$cur" : '\(.*[=:]\)')
for c in "${COMPREPLY[@]}"; do printf '%s%s\n' "$keep" "$c"; done
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
    assert set(complete(alice, shell, "ls --state=ru")) == {"--state=running"}
    assert set(complete(alice, shell, "run --notify=f")) == {"--notify=fail"}
    assert set(complete(alice, shell, "ls --state running,pe")) == {"running,pending"}


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
def test_experiments_are_the_callers_own(daemon, venv, shell):
    alice, bob = User(ALICE, venv, daemon.socket), User(BOB, venv, daemon.socket)
    a = alice.ok("submit", "--hold", "-e", f"lr-sweep-{shell}", "--", "true").strip()
    b = bob.ok("submit", "--hold", "-e", f"bob-data-{shell}", "--", "true").strip()
    try:
        for verb in ("ls -e ", "cancel -e ", "wait --experiment ", "submit -e ", "run -e "):
            assert f"lr-sweep-{shell}" in complete(alice, shell, verb), verb
            assert f"bob-data-{shell}" not in complete(alice, shell, verb), verb
            assert f"bob-data-{shell}" in complete(bob, shell, verb), verb
        mine = f"exp:lr-sweep-{shell}"
        assert complete(alice, shell, f"submit --after {mine[:-1]}") == [mine]
        assert {f"{b},{b}", f"{b},exp:bob-data-{shell}"} <= \
            set(complete(bob, shell, f"submit --after {b},"))
    finally:
        alice.ok("cancel", a)
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


# -- Tab in a terminal ----------------------------------------------------------------------
# each shell starts bare, loads the script as the README says, and shows a plain prompt
INTERACTIVE = {
    "bash": (["bash", "--norc", "--noprofile", "-i"],
             ["PS1='$ '", 'eval "$(labq completion bash)"']),
    "zsh": (["zsh", "-f", "-i"],
            ["PS1='$ '", "autoload -U compinit && compinit -u -D",
             "source <(labq completion zsh)"]),
    "fish": (["fish", "--no-config", "-i"],
             ["function fish_prompt; echo -n '$ '; end", "labq completion fish | source"]),
}


_TERMINALS = itertools.count()  # a tmux server each: one being killed cannot take another


class Terminal:
    """A shell of `user` in a tmux pane: type, press Tab, and read the line back. Keys reach
    the shell in order, so the Ctrl-A and `echo LINE=` typed after Tab run once the
    completion is done, and print the line it left."""

    def __init__(self, user: User, shell: str, socket) -> None:
        self.tmux = ["tmux", "-L", f"labq-compl-{os.getpid()}-{next(_TERMINALS)}"]
        argv, setup = INTERACTIVE[shell]
        env = [f"{k}={v}" for k, v in dict(user.env(), LABQ_SOCKET=str(socket),
                                           TERM="xterm").items()]
        cmd = ["env", "-i", *env, "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}",
               "--init-groups", "--", *argv]
        subprocess.run(self.tmux + ["new-session", "-d", "-x", "150", "-y", "50", "-c",
                                    str(user.home), *cmd], check=True)
        self.seen = 0
        for line in setup:
            self.keys("-l", line)
            self.keys("Enter")
        self.run("echo READY")

    def keys(self, *keys: str) -> None:
        subprocess.run(self.tmux + ["send-keys", "-t", "0", *keys], check=True)

    def screen(self) -> list[str]:
        lines = subprocess.run(self.tmux + ["capture-pane", "-p", "-S", "-", "-t", "0"],
                               capture_output=True, text=True, check=True).stdout
        return lines.rstrip("\n").splitlines()

    def run(self, command: str) -> list[str]:
        """Type the rest of a command line and Enter; the screen's lines since the last
        command's."""
        marker = f"END-{self.seen}-OUTPUT"
        self.keys("-l", command + f"; echo {marker}")
        self.keys("Enter")
        shown = wait_for(lambda: (lambda s: s if any(x == marker for x in s) else None)(
            self.screen()[self.seen:]), timeout=30, what=f"{command!r} in the terminal")
        self.seen += len(shown)
        return shown

    def tab(self, typed: str) -> str:
        """The line after typing `typed` and pressing Tab once."""
        self.keys("-l", typed)
        self.keys("Tab")
        self.keys("C-a")
        self.keys("-l", "echo LINE=")
        self.keys("C-e")
        out = self.run("")
        return next(x for x in out if x.startswith("LINE="))[len("LINE="):].strip()

    def close(self) -> None:
        subprocess.run(self.tmux + ["kill-server"], capture_output=True)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_tab_in_a_terminal_completes_values_after_equals_and_colons(daemon, venv, shell):
    alice = User(ALICE, venv, daemon.socket)
    job = alice.ok("submit", "--hold", "-e", f"tabbed-{shell}", "--", "true").strip()
    term = Terminal(alice, shell, daemon.socket)
    try:
        assert term.tab("labq sh") == "labq show"
        assert term.tab("labq ls --state=ru") == "labq ls --state=running"
        assert term.tab("labq submit --notify=al") == "labq submit --notify=all"
        assert term.tab(f"labq cancel -e tabbed-{shell[:2]}") == f"labq cancel -e tabbed-{shell}"
        assert term.tab(f"labq submit --after exp:tabbed-{shell[:2]}") == \
            f"labq submit --after exp:tabbed-{shell}"
        text = "\n".join(term.screen())
        assert "Traceback" not in text and "rror" not in text, text
    finally:
        term.close()
        alice.ok("cancel", job)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_tab_in_a_terminal_completes_paths_where_labq_takes_them(daemon, venv, shell):
    alice = User(ALICE, venv, daemon.socket)
    script, data = alice.home / f"train-{shell}.sh", alice.home / f"data-{shell}"
    script.write_text("#!/bin/sh\n#SBATCH --gpus 1\ntrue\n")
    data.mkdir()
    for p in (script, data):
        os.chown(p, alice.uid, alice.gid)
    term = Terminal(alice, shell, daemon.socket)
    try:
        assert term.tab(f"labq submit train-{shell}") == f"labq submit train-{shell}.sh"
        assert term.tab(f"labq submit -- python3 train-{shell}") == \
            f"labq submit -- python3 train-{shell}.sh"
        # zsh takes back the slash it put after a directory once the cursor moves
        assert term.tab(f"labq run --chdir data-{shell[:2]}").rstrip("/") == \
            f"labq run --chdir data-{shell}"
        assert term.tab(f"labq submit --chdir=data-{shell[:2]}").rstrip("/") == \
            f"labq submit --chdir=data-{shell}"
        assert term.tab("labq --notify=al") == "labq --notify=al"  # no such option: nothing
    finally:
        term.close()
        script.unlink()
        data.rmdir()


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_tab_in_a_terminal_with_labqd_down_or_hung_prints_nothing(venv, shell):
    alice = User(ALICE, venv)
    base = Path(tempfile.mkdtemp(dir="/var/tmp"))
    base.chmod(0o755)
    hung = base / "hung.sock"
    listening = socketmod.socket(socketmod.AF_UNIX)  # accepts, never answers
    listening.bind(str(hung))
    listening.listen(8)
    hung.chmod(0o777)
    try:
        for sock in (base / "absent.sock", hung):
            term = Terminal(alice, shell, sock)
            try:
                before = term.seen
                assert term.tab("labq show ") == "labq show"
                assert term.tab("labq cancel -e ") == "labq cancel -e"
                assert term.tab("labq sh") == "labq show"  # what needs no labqd still works
                text = "\n".join(term.screen()[before:])
                assert "labqd" not in text and "Traceback" not in text, (sock, text)
            finally:
                term.close()
    finally:
        listening.close()
        shutil.rmtree(base)
