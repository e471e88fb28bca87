"""Batch scripts read as sbatch reads them: the `#SBATCH` header, each directive's forms, the
warnings and errors a user sees, the command line over the directives, and the launcher that
runs the script's text with its own interpreter. No labqd: `labq submit --dry-run` shows the
spec a submit would send."""
import json
import subprocess

import pytest

from labq.cli import main
from labq.errors import ValidationError
from labq.sbatch import SCRIPT_VAR, interpreter, is_batch_script, load_script, parse_script


def script(*directives: str, body: str = "echo hi\n", shebang: str = "#!/bin/bash") -> str:
    return "\n".join([shebang, *(f"#SBATCH {d}" for d in directives)]) + "\n" + body


def options(*directives: str, **kw) -> dict:
    return parse_script(script(*directives), "job.sh", cwd="/home/alice/proj", **kw).options


def refused(*directives: str) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        parse_script(script(*directives), "job.sh")
    return e.value


def test_directives_are_read_until_the_first_command_as_sbatch_does():
    text = ("#!/bin/bash\n\n# a comment\n#SBATCH -c 4\n##SBATCH --gpus=8\n# SBATCH --gpus=7\n"
            "   \n#SBATCH --mem=2G  # memory\nmodule load cuda\n#SBATCH --gpus=3\n")
    assert parse_script(text, "job.sh").options == {"cpus": 4, "memory": 2048,
                                                    "name": "job.sh"}


def test_gpus_from_gres_and_from_gpus():
    assert options("--gres=gpu:2") == {"gpus": 2, "name": "job.sh"}
    assert options("--gres=gpu:a100:2")["gpu_type"] == "a100"
    assert options("--gres=gpu:a100:2")["gpus"] == 2
    assert options("--gres=gpu:a100") | {} == {"gpus": 1, "gpu_type": "a100", "name": "job.sh"}
    assert options("--gres=gpu")["gpus"] == 1
    assert options("--gpus=3")["gpus"] == 3
    assert options("--gpus=h100:4") == {"gpus": 4, "gpu_type": "h100", "name": "job.sh"}
    assert options("-G 2")["gpus"] == 2
    assert options("--gpus-per-node 1")["gpus"] == 1


def test_nodes_make_a_gang_with_gpus_per_node_as_in_slurm():
    from labq.spec import validate_submit
    # --gres and --gpus-per-node count each node's GPUs, --gpus the job's: labq's --gpus is
    # the job's total
    for directives in (("-N 2", "--gres=gpu:4"), ("--nodes=2", "--gpus-per-node=4"),
                       ("-N 2-2", "-G 8"), ("--gres=gpu:4", "-N 2")):
        opts = options(*directives)
        assert (opts["nodes"], opts["gpus"]) == (2, 8), directives
        spec = validate_submit({"command": ["true"], "cwd": "/", "nodes": opts["nodes"],
                                "gpus": opts["gpus"]})
        assert (spec["nodes"], spec["gpus"]) == (2, 8)
    assert "nodes" not in options("-N 1", "--gres=gpu:2")
    assert options("-N 1", "--gres=gpu:2")["gpus"] == 2


def test_sizes_are_mib_without_a_unit_as_in_slurm():
    assert options("--mem=16G")["memory"] == 16384
    assert options("--mem=16000")["memory"] == 16000
    assert options("--mem 512M")["memory"] == 512
    assert options("-c 4", "--mem-per-cpu=2G")["memory"] == 8192
    assert options("--gpus=2", "--mem-per-gpu=10G")["memory"] == 20480


@pytest.mark.parametrize("text,seconds", [
    ("90", 5400), ("10:30", 630), ("1:30:00", 5400), ("2-12", 2 * 86400 + 12 * 3600),
    ("1-02:30", 86400 + 2 * 3600 + 30 * 60), ("1-00:00:05", 86405)])
def test_every_time_form_of_slurm(text, seconds):
    assert options(f"-t {text}")["time_limit"] == seconds
    assert options(f"--time={text}")["time_limit"] == seconds


def test_names_directories_arrays_dependencies_partitions_accounts():
    got = options("-J train", "-D out/run1", "--array=0-9%2", "-d afterok:12:13",
                  "-p short", "-A physics", "--mail-type=END,FAIL", "--hold",
                  "--no-requeue", "--signal=B:USR1@90")
    assert got == {"name": "train", "cwd": "/home/alice/proj/out/run1",
                   "after": ["afterok:12", "afterok:13"], "partition": "short",
                   "group": "physics", "notify": "end", "hold": True, "requeue": False,
                   "early_signal": "USR1@90"}
    assert parse_script(script("--array=0-9%2"), "job.sh").array == "0-9%2"
    assert options("--dependency=afterany:5,afternotok:6")["after"] == ["afterany:5",
                                                                       "afternotok:6"]
    assert options("-D /scratch")["cwd"] == "/scratch"


def test_export_lists():
    environ = {"HOME": "/home/alice", "PATH": "/usr/bin"}
    assert options("--export=ALL", environ=environ) | {} == {
        "export_env": True, "env": {}, "name": "job.sh"}
    assert options("--export=NONE", environ=environ)["export_env"] is False
    got = options("--export=ALL,A=1,HOME", environ=environ)
    assert got["export_env"] is True and got["env"] == {"A": "1", "HOME": "/home/alice"}
    got = options('--export=A=1,"B=two words"', environ=environ)
    assert got["export_env"] is False and got["env"] == {"A": "1", "B": "two words"}


def test_what_labq_ignores_is_a_warning_that_names_the_line():
    s = parse_script(script("-c 2", "--qos=high --exclusive", "-o out_%j.txt", "-e err.txt",
                            "--gres=gpu:1,shard:2", "--nodelist node3"), "job.sh")
    assert s.options == {"cpus": 2, "gpus": 1, "name": "job.sh"}
    assert s.warnings == (
        "job.sh:3: #SBATCH --qos=high: labq does not know this directive; ignored",
        "job.sh:3: #SBATCH --exclusive: labq does not know this directive; ignored",
        "job.sh:4: #SBATCH -o out_%j.txt: labq keeps the job's output in its own log "
        "(`labq logs ID`); ignored",
        "job.sh:5: #SBATCH -e err.txt: labq keeps the job's output in its own log "
        "(`labq logs ID`); ignored",
        "job.sh:6: #SBATCH --gres=gpu:1,shard:2: labq schedules GPUs only; 'shard:2' ignored",
        "job.sh:7: #SBATCH --nodelist node3: labq does not know this directive; ignored")


@pytest.mark.parametrize("directive,says", [
    ("--gres=gpu:a100:two", "'two' is not a number of GPUs"),
    ("--gres=gpu:a:b:1", "is not gpu[:TYPE][:COUNT]"),
    ("--gpus=x:y:1", "is not [TYPE:]COUNT"),
    ("--mem=lots", "'lots' is not a size"),
    ("-t 1:2:3:4", "is not a time"),
    ("-c 0", "'0' is not a number of CPUs"),
    ("--array=9-0", "ranges go up"),
    ("-d after:12", "'after': labq knows afterok, afterany, afternotok"),
    ("-d afterok:12?afterok:13", "not for any one ('?')"),
    ("-d afterok:12_3", "'12_3' is not a job id"),
    ("-N 2-4", "labq runs a job on a set number of nodes; give -N 2"),
    ("-N 0", "'0' is not a number of nodes"),
    ("-p a,b", "labq takes one partition"),
    ("--export=1BAD=x", "'1BAD' is not a variable name"),
    ("--time", "needs a value"),
    ("-J 'unclosed", "cannot read the line"),
])
def test_a_malformed_directive_is_a_typed_error_naming_its_line(directive, says):
    e = refused("-c 2", directive)
    assert says in e.message and e.message.startswith("job.sh:3: #SBATCH ")
    assert e.details["line"] == 3 and e.code == "VALIDATION_ERROR"


def test_no_time_limit_and_dos_line_breaks_as_sbatch_has_them():
    for text in ("0", "UNLIMITED", "infinite"):
        assert "time_limit" not in options("-t 5", f"-t {text}")
    with pytest.raises(ValidationError, match="DOS line breaks"):
        parse_script("#!/bin/bash\r\n#SBATCH -c 2\r\necho hi\r\n", "job.sh")


def test_an_unquoted_hash_starts_a_comment_as_in_sbatch():
    assert options("-J run#1 -c 2")["name"] == "run"
    assert options("-J 'run#1' -c 2") | {} == {"name": "run#1", "cpus": 2}


def test_the_shebang_is_read_as_the_kernel_reads_it():
    assert interpreter("#!/bin/bash\n") == ("/bin/bash",)
    assert interpreter("#! /usr/bin/env python3 -u -X dev\r\n") == ("/usr/bin/env",
                                                                   "python3 -u -X dev")
    for bad in ("echo no shebang\n", "#!\n", "#!   \n"):
        with pytest.raises(ValidationError):
            interpreter(bad)


def test_the_command_line_wins_over_directives_and_env_merges():
    s = parse_script(script("-c 4", "-J dir", "--gpus=2", "--export=ALL,A=1,B=2"), "job.sh")
    command, opts = s.submit_args(["x"], {"cpus": 1, "name": None, "gpus": 0,
                                          "env": {"B": "cli"}, "export_env": False})
    assert opts["cpus"] == 1 and opts["name"] == "dir" and opts["gpus"] == 0
    assert opts["export_env"] is False
    assert opts["env"] == {"A": "1", "B": "cli", SCRIPT_VAR: s.text}
    assert command[:2] == ["/bin/sh", "-c"] and command[3:] == ["job.sh", "x"]


def run(text: str, *args: str) -> subprocess.CompletedProcess:
    command, opts = parse_script(text, "job.sh").submit_args(list(args))
    return subprocess.run(command, env=opts["env"], capture_output=True, timeout=10)


def test_the_launcher_hands_the_text_to_the_interpreter_byte_for_byte():
    text = ("#!/bin/cat\n#SBATCH -c 1\nLABQ_SCRIPT_END\n$HOME `id` $(id) \\n \\\\ 'q' \"q\"\n"
            "ünïcode\n")
    r = run(text)
    assert r.returncode == 0 and r.stdout.decode() == text + "\n"


def test_the_script_gets_its_arguments_and_exit_code_and_not_its_own_text():
    text = script("-c 1", body='echo "$#:$1:$2"; echo "[${LABQ_SCRIPT-unset}]"; '
                               'for index in 7; do echo ${index}; done; exit 3\n')
    r = run(text, "a b", "c")
    assert r.returncode == 3
    assert r.stdout.decode().splitlines() == ["2:a b:c", "[unset]", "7"]
    py = run(script("-c 1", shebang="#!/usr/bin/env python3",
                    body="import sys\nprint(sys.argv[1:])\nsys.exit(5)\n"), "x")
    assert (py.returncode, py.stdout) == (5, b"['x']\n")


def test_a_missing_interpreter_fails_as_exec_does():
    r = run(script("-c 1", shebang="#!/no/such/shell"))
    assert r.returncode == 127 and b"/no/such/shell" in r.stderr


def test_which_files_are_batch_scripts(tmp_path):
    (tmp_path / "batch.sh").write_text(script("-c 2"))
    (tmp_path / "plain.sh").write_text("#!/bin/bash\necho no directives\n")
    (tmp_path / "late.sh").write_text("#!/bin/bash\necho x\n#SBATCH -c 2\n")
    (tmp_path / "bin").write_bytes(b"\x7fELF\x00#SBATCH -c 2\n")
    assert is_batch_script(str(tmp_path / "batch.sh"))
    for name in ("plain.sh", "late.sh", "bin", "missing"):
        assert not is_batch_script(str(tmp_path / name)), name
    assert load_script(str(tmp_path / "batch.sh")).options["cpus"] == 2
    assert load_script(script("-c 3")).options["cpus"] == 3


def dry(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["submit", "--dry-run", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_dry_run_shows_the_spec_with_the_command_line_over_the_script(tmp_path, capsys,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.sh").write_text(script(
        "--gres=gpu:a100:2 -c 4 --mem=16G -t 2-00", "-J train --qos=high",
        "--array=0-3%2 -d afterok:12", "--export=NONE,A=1"))
    code, spec, err = dry(capsys, "train.sh", "arg1")
    assert code == 0
    assert {k: spec[k] for k in ("gpus", "gpu_type", "cpus", "memory_mb", "time_limit_s",
                                 "name", "array", "dependencies", "env", "export_env",
                                 "cwd")} == {
        "gpus": 2, "gpu_type": "a100", "cpus": 4, "memory_mb": 16384,
        "time_limit_s": 2 * 86400, "name": "train", "array": "0-3%2",
        "dependencies": ["afterok:12"], "env": {"A": "1"}, "export_env": False,
        "cwd": str(tmp_path)}
    assert spec["script"] == (tmp_path / "train.sh").read_text()
    assert spec["command"][-2:] == ["train.sh", "arg1"]
    assert "#SBATCH --qos=high: labq does not know this directive" in err
    code, spec, _ = dry(capsys, "--gpus", "0", "-c", "1", "--name", "cli", "--array", "0-1",
                        "--time", "30", "train.sh")
    assert (spec["gpus"], spec["cpus"], spec["name"], spec["array"], spec["time_limit_s"]) \
        == (0, 1, "cli", "0-1", 1800)


def test_dry_run_of_a_malformed_script_says_where_and_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.sh").write_text(script("-c 2", "--mem=lots"))
    code, spec, err = dry(capsys, "bad.sh")
    assert code == 1 and spec is None
    assert err == ("labq: VALIDATION_ERROR: bad.sh:3: #SBATCH --mem=lots: 'lots' is not a "
                   "size (e.g. 16000, 16G)\n")


def test_after_a_double_dash_a_script_is_a_command_run_by_its_path(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.sh").write_text(script("-c 4"))
    code, spec, _ = dry(capsys, "--", "./train.sh")
    assert code == 0 and spec["command"] == ["./train.sh"] and spec["cpus"] == 1
    assert "script" not in spec
