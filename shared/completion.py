"""Shell completion: `labq completion bash|zsh|fish` prints a script, and the script asks
`labq __complete WORDS...` for the candidates of the last word.

Subcommands, options and their fixed choices come from the CLI's argparse parser, so a new
option completes with no change here. What only labqd knows (the caller's active jobs, node
and group names) is asked of labqd with a short timeout; whatever goes wrong, the answer is
fewer candidates and never a message in the user's prompt.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from .states import JobState

if TYPE_CHECKING:
    from .client import Client

SHELLS = ("bash", "zsh", "fish")
TIMEOUT_S = 1.5  # a completion that takes longer is worse than none

# what an argument names, by (command, argument's dest): the candidates labqd knows
DYNAMIC = {
    ("show", "id"): "jobs", ("events", "id"): "jobs", ("logs", "id"): "jobs",
    ("priority", "id"): "jobs", ("update", "id"): "jobs", ("cancel", "ids"): "jobs",
    ("hold", "ids"): "jobs", ("release", "ids"): "jobs", ("wait", "ids"): "jobs",
    ("submit", "after"): "jobs",
    ("submit", "group"): "groups", ("group", "group"): "groups", ("node", "name"): "nodes",
    ("ls", "state"): "states",
}
LISTS = {("ls", "state"), ("submit", "after")}  # comma-separated values


def _jobs(q: Client) -> list[str]:
    me = q.whoami()["user"]  # one's own jobs: another user's cannot be touched anyway
    return [f"{j.id}\t{j.name}" for j in q.jobs(user=me, include_ended=False)]


def _nodes(q: Client) -> list[str]:
    return [n.name for n in q.nodes()]


def _groups(q: Client) -> list[str]:
    return [g["group"] for g in q.groups()]


# kind -> how labqd is asked; a new kind (experiment names, once labqd keeps them) is one
# entry here and its (command, dest) pairs in DYNAMIC
PROVIDERS: dict[str, Callable[[Client], list[str]]] = {
    "jobs": _jobs, "nodes": _nodes, "groups": _groups,
}


def _ask(kind: str, socket: str | None) -> list[str]:
    if kind == "states":
        return [s.value.lower() for s in JobState]
    provider = PROVIDERS.get(kind)
    if provider is None:
        return []
    found: list[str] = []

    def work() -> None:
        from . import connect
        try:
            with connect(socket, timeout=TIMEOUT_S) as q:
                found.extend(provider(q))
        except BaseException:  # a completion never reports
            found.clear()

    import threading  # a completion's own need: `labq submit` does without it
    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(TIMEOUT_S)
    return [] if t.is_alive() else list(found)


def _options(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions for s in a.option_strings}


def _positionals(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if not a.option_strings]


def candidates(parser: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """The completions of words[-1], given the words before it (those after `labq`)."""
    cur, done = (words[-1], words[:-1]) if words else ("", [])
    p, cmd, socket = parser, "", None
    index, expecting = 0, None  # the positional reached; the option whose value comes next
    for w in done:
        if expecting is not None:
            if expecting.dest == "socket":
                socket = w
            expecting = None
        elif w == "--":
            return []  # a command to run follows: the shell's own business
        elif w.startswith("-") and len(w) > 1:
            act = _options(p).get(w.split("=", 1)[0])
            if act is not None and act.nargs != 0 and "=" not in w:
                expecting = act
        else:
            pos = _positionals(p)
            if index < len(pos) and pos[index].nargs == argparse.REMAINDER:
                return []
            if index < len(pos) and isinstance(pos[index], argparse._SubParsersAction):
                sub = cast(dict[str, argparse.ArgumentParser], pos[index].choices)
                if w not in sub:
                    return []
                p, cmd, index = sub[w], w, 0
            elif index < len(pos) and pos[index].nargs not in ("+", "*"):
                index += 1
    if expecting is not None:
        return _values(cmd, expecting, cur, socket)
    if cur.startswith("-"):
        return sorted(s for s, a in _options(p).items()
                      if s.startswith(cur) and a.help is not argparse.SUPPRESS)
    pos = _positionals(p)
    if index < len(pos):
        return _values(cmd, pos[index], cur, socket)
    return []


def _values(cmd: str, act: argparse.Action, cur: str, socket: str | None) -> list[str]:
    head = cur[:cur.rfind(",") + 1] if (cmd, act.dest) in LISTS else ""
    if isinstance(act, argparse._SubParsersAction):
        names = [n for n in (act.choices or {}) if not n.startswith("_")]
    elif act.choices is not None:
        names = [str(c) for c in act.choices]
    elif (cmd, act.dest) in DYNAMIC:
        names = _ask(DYNAMIC[(cmd, act.dest)], socket)
    else:
        return []
    return [head + n for n in names if (head + n).startswith(cur)]


def run(parser: argparse.ArgumentParser, words: list[str]) -> int:
    """`labq __complete WORDS...`: candidates one per line ('value<TAB>description')."""
    # nothing may reach the prompt: not a warning, not a traceback from a thread
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sys.stderr = open(devnull, "w")  # lives until the process ends
    try:
        out = candidates(parser, words)
    except Exception:
        out = []
    sys.stdout.write("".join(c.replace("\n", " ") + "\n" for c in out))
    sys.stdout.flush()
    os._exit(0)  # a labqd that does not answer leaves a thread behind: do not wait for it


def script(shell: str) -> str:
    return {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell]


BASH = r"""# labq completion for bash. Load it with: eval "$(labq completion bash)"
_labq_complete() {
    local out line
    COMPREPLY=()
    out=$(command labq __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) || return 0
    [ -n "$out" ] || return 0
    while IFS= read -r line; do
        COMPREPLY+=("${line%%$'\t'*}")
    done <<< "$out"
}
complete -o nosort -F _labq_complete labq 2>/dev/null || complete -F _labq_complete labq
"""

ZSH = r"""#compdef labq
# labq completion for zsh. Load it (after compinit) with: source <(labq completion zsh)
_labq() {
    local -a found
    found=("${(@f)$(command labq __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    found=("${(@)found%%$'\t'*}")
    found=(${found:#})
    (( ${#found} )) && compadd -- "${found[@]}"
    return 0
}
compdef _labq labq
"""

FISH = r"""# labq completion for fish. Load it with: labq completion fish | source
function __labq_complete
    set -l tokens (commandline -opc) (commandline -ct)
    command labq __complete $tokens[2..-1] 2>/dev/null
end
complete -c labq -f -a '(__labq_complete)'
"""
