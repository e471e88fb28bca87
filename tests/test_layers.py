"""The layers stay apart: what users import pulls in no daemon, database, SSH or UI code;
the daemon never imports the UI; the node agent is stdlib only."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return {m.split(".")[0] for m in out} | set(out)


def test_client_library_and_cli_import_no_heavy_parts():
    mods = imported_after("import labq, labq.cli")
    assert not mods & {"textual", "peewee", "paramiko", "labq.daemon", "labq.tui"}


def test_the_cli_imports_only_what_a_submit_needs():
    # a `labq` command pays for every module it imports before it does anything
    mods = imported_after("import labq.cli")
    assert not mods & {"textual", "rich", "rpyc", "peewee", "paramiko", "ssl", "logging",
                       "asyncio", "labq.tui", "labq.daemon"}


def test_daemon_does_not_import_the_tui():
    mods = imported_after("import labq.daemon.main, labq.daemon.core, labq.daemon.scheduler, "
                          "labq.daemon.service, labq.daemon.sim")
    assert not mods & {"textual", "labq.tui"}


def test_policy_is_pure():
    mods = imported_after("import labq.daemon.policy")
    assert not mods & {"peewee", "paramiko", "rpyc", "textual", "sqlite3", "socket"}


def test_node_agent_uses_the_standard_library_only():
    names = set()
    for f in (ROOT / "daemon" / "nodes" / "agent").glob("*.py"):
        tree = ast.parse(f.read_text())
        names |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                  for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    optional = {"psutil", "pynvml"}  # imported inside try blocks, used when present
    assert names - optional <= set(sys.stdlib_module_names)
    # and it runs from the bundle alone, as labqd sends it over SSH: isolated (-I), outside
    # the repository, with no labq installed on the path
    from labq.daemon.nodes.transport import BOOTSTRAP, agent_program
    program = agent_program()
    r = subprocess.run([sys.executable, "-I", "-c", BOOTSTRAP, "--help"], cwd="/",
                       input=b"%d\n" % len(program) + program, capture_output=True)
    assert b"Traceback" not in r.stderr, r.stderr.decode()
    probe = program.replace(b"from labq_agent.main import main\nmain()\n",
                            b"from labq_agent.probe import parse_nvidia_smi\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-I", "-c", BOOTSTRAP], cwd="/",
                       input=b"%d\n" % len(probe) + probe, capture_output=True, text=False)
    assert r.stdout.decode().strip() == "ok", r.stderr.decode()
