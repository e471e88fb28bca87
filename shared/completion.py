"""Shell completion: `labq completion bash|zsh|fish` prints a script, and the script asks
`labq __complete WORDS...` for the candidates of the last word.

Subcommands, options and their fixed choices come from the CLI's argparse parser, so a new
option completes with no change here. What only labqd knows (the caller's active jobs and
experiments, node and group names) is asked of labqd with a short timeout; whatever goes
wrong, the answer is fewer candidates and never a message in the user's prompt. Where labq
takes a path (a batch script, the command after `--`, --chdir, --stage, …) the answer is
FILES, and each shell completes file names there as it would without this script.

bash splits `--state=ru` and `exp:NAME` at `=` and `:` (COMP_WORDBREAKS) and replaces only the
text after the last of them, so its script sends the line as typed and gets candidates cut
to that text; zsh and fish keep such a word whole.
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
    ("submit", "after"): "deps",
    ("submit", "group"): "groups", ("group", "group"): "groups", ("node", "name"): "nodes",
    ("ls", "state"): "states",
    ("submit", "experiment"): "experiments", ("ls", "experiment"): "experiments",
    ("cancel", "experiment"): "experiments", ("hold", "experiment"): "experiments",
    ("release", "experiment"): "experiments", ("wait", "experiment"): "experiments",
}
SAME_OPTIONS = {"run": "submit"}  # `labq run` takes submit's options
# what names a file or directory: the shell's own completion of paths does these
PATHS = {("submit", "command"), ("submit", "chdir"), ("submit", "stage"),
         ("submit", "from_file"), ("node", "identity_file"), ("results", "output"),
         ("results", "dir"), ("", "socket")}
FILES = "@files"  # the answer that asks the shell to complete paths
LISTS = {("ls", "state"), ("submit", "after")}  # comma-separated values


def _jobs(q: Client) -> list[str]:
    me = q.whoami()["user"]  # one's own jobs: another user's cannot be touched anyway
    return [f"{j.id}\t{j.name}" for j in q.jobs(user=me, include_ended=False)]


def _experiments(q: Client) -> list[str]:
    me = q.whoami()["user"]  # `-e NAME` means one's own experiment of that name
    return [e["name"] for e in q.experiments(user=me)]


def _deps(q: Client) -> list[str]:
    """What --after takes: one's active jobs, and `exp:NAME` for every job of an experiment."""
    return _jobs(q) + [f"exp:{name}" for name in _experiments(q)]


def _nodes(q: Client) -> list[str]:
    return [n.name for n in q.nodes()]


def _groups(q: Client) -> list[str]:
    return [g["group"] for g in q.groups()]


# kind -> how labqd is asked; a new kind is one entry here and its (command, dest) pairs
# in DYNAMIC
PROVIDERS: dict[str, Callable[[Client], list[str]]] = {
    "jobs": _jobs, "deps": _deps, "experiments": _experiments, "nodes": _nodes,
    "groups": _groups,
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
            return [FILES]  # a command to run follows: its words are paths
        elif w.startswith("-") and len(w) > 1:
            act = _options(p).get(w.split("=", 1)[0])
            if act is not None and act.nargs != 0 and "=" not in w:
                expecting = act
        else:
            pos = _positionals(p)
            if index < len(pos) and pos[index].nargs == argparse.REMAINDER:
                return [FILES]  # a batch script and its arguments
            if index < len(pos) and isinstance(pos[index], argparse._SubParsersAction):
                sub = cast(dict[str, argparse.ArgumentParser], pos[index].choices)
                if w not in sub:
                    return []
                p, cmd, index = sub[w], w, 0
            elif index < len(pos) and pos[index].nargs not in ("+", "*"):
                index += 1
    if expecting is not None:
        return _values(cmd, expecting, cur, socket)
    if cur.startswith("--") and "=" in cur:  # --opt=VALUE: the value, after its option
        name, value = cur.split("=", 1)
        act = _options(p).get(name)
        if act is None or act.nargs == 0:
            return []
        found = _values(cmd, act, value, socket)
        return found if found == [FILES] else [f"{name}={v}" for v in found]
    if cur.startswith("-"):
        return sorted(s for s, a in _options(p).items()
                      if s.startswith(cur) and a.help is not argparse.SUPPRESS)
    pos = _positionals(p)
    if index < len(pos):
        return _values(cmd, pos[index], cur, socket)
    return []


def _values(cmd: str, act: argparse.Action, cur: str, socket: str | None) -> list[str]:
    cmd = SAME_OPTIONS.get(cmd, cmd)
    if (cmd, act.dest) in PATHS:
        return [FILES]
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


def line_words(line: str) -> list[str]:
    """The words of a command line typed up to the cursor, `labq` left out; the last one is
    the word being completed ('' after a space). An unclosed quote is closed."""
    import shlex
    for end in ("", '"', "'"):
        try:
            words = shlex.split(line + end)
            break
        except ValueError:
            continue
    else:
        return []
    if not line or line[-1] in " \t":
        words.append("")
    return words[1:]


def cut_at_breaks(found: list[str], cur: str, breaks: str) -> list[str]:
    """The candidates as bash replaces them: only the text after the current word's last
    COMP_WORDBREAKS character."""
    k = max((cur.rfind(c) for c in set(breaks) - set(" \t\n\"'")), default=-1) + 1
    return [c[k:] for c in found if c[:k] == cur[:k]]


def run(parser: argparse.ArgumentParser, args: list[str]) -> int:
    """`labq __complete WORDS...`, or `labq __complete --line BREAKS LINE` (bash):
    candidates one per line ('value<TAB>description'), or FILES alone."""
    # nothing may reach the prompt: not a warning, not a traceback from a thread
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    sys.stderr = open(devnull, "w")  # lives until the process ends
    try:
        if args[:1] == ["--line"] and len(args) == 3:
            words = line_words(args[2])
            out = candidates(parser, words)
            if out != [FILES]:
                out = cut_at_breaks(out, words[-1] if words else "", args[1])
        else:
            out = candidates(parser, args)
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
    out=$(command labq __complete --line "$COMP_WORDBREAKS" "${COMP_LINE:0:COMP_POINT}" \
          2>/dev/null) || return 0
    [ -n "$out" ] || return 0
    if [ "$out" = @files ]; then
        compopt -o default 2>/dev/null  # readline's own file names
        return 0
    fi
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
    if [[ $found == @files ]]; then
        [[ $PREFIX == --*=* ]] && compset -P '*='  # --chdir=DIR: the part after =
        (( $+functions[_files] )) && _files
        return 0
    fi
    (( ${#found} )) && compadd -- "${found[@]}"
    return 0
}
compdef _labq labq
"""

FISH = r"""# labq completion for fish. Load it with: labq completion fish | source
function __labq_complete
    set -l tokens (commandline -opc) (commandline -ct)
    set -l found (command labq __complete $tokens[2..-1] 2>/dev/null)
    if test "$found" = @files
        # --chdir=DIR: paths after the =, each given back with it
        set -l opt (string match -r -- '^--[^=]*=' (commandline -ct))
        __fish_complete_path (string replace -r -- '^--[^=]*=' '' (commandline -ct)) |
            string replace -r -- '^' "$opt"
    else
        printf '%s\n' $found
    end
end
complete -c labq -f -a '(__labq_complete)'
"""
