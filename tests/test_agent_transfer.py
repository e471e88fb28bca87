"""The agent's file transfers in process: globs, paths that would leave their directory,
symlinks and FIFOs planted where files are read or written."""
import base64
import os

import pytest

from labq.daemon.nodes.agent.transfer import TransferError, Transfers, glob_regex


@pytest.mark.parametrize("glob,yes,no", [
    ("out/**", ["out/a", "out/b/c.pt"], ["outx/a", "a/out/b", "out"]),
    ("**/*.pt", ["a.pt", "x/y/z.pt"], ["a.ptx", "x/a.pth"]),
    ("*.log", ["a.log"], ["d/a.log"]),
    ("ckpt-?.bin", ["ckpt-1.bin"], ["ckpt-10.bin", "ckpt-/.bin"]),
    ("a[1].txt", ["a[1].txt"], ["a1.txt"]),
])
def test_globs(glob, yes, no):
    rx = glob_regex(glob)
    assert all(rx.match(p) for p in yes) and not any(rx.match(p) for p in no)


@pytest.fixture
def agent(tmp_path):
    return Transfers("c", "n"), {"job": "7.0", "scratch_root": str(tmp_path / "s")}


def put(t, where, path, data, offset=0, last=True, mode=0o644):
    return t.op_stage_put(dict(where, path=path, offset=offset, last=last, mode=mode,
                               data=base64.b64encode(data).decode()))


def test_staged_files_land_whole_in_a_fresh_scratch_directory(agent):
    t, where = agent
    path = t.op_stage_begin(where)["path"]
    put(t, where, "d/e/f.txt", b"abc", last=False)
    put(t, where, "d/e/f.txt", b"def", offset=3, mode=0o755)
    assert open(os.path.join(path, "d/e/f.txt"), "rb").read() == b"abcdef"
    assert os.stat(os.path.join(path, "d/e/f.txt")).st_mode & 0o777 == 0o755
    assert os.stat(path).st_mode & 0o777 == 0o700
    with pytest.raises(TransferError, match="changed while it was staged"):
        put(t, where, "d/e/f.txt", b"x", offset=3)  # out of order
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "."):
        with pytest.raises(TransferError, match="bad path"):
            put(t, where, bad, b"x")
    t.op_stage_begin(dict(where, job="7.1"))  # a new run of the job: the old one goes
    assert not os.path.exists(path)


def test_planted_links_and_fifos_are_neither_followed_nor_waited_on(agent, tmp_path):
    t, where = agent
    path = t.op_stage_begin(where)["path"]
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(path, "d"))
    with pytest.raises(TransferError):
        put(t, where, "d/x", b"x")
    os.mkfifo(os.path.join(path, "fifo"))
    with pytest.raises(TransferError):
        put(t, where, "fifo", b"x", offset=1)
    assert list(outside.iterdir()) == []
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "out" / "a").write_text("a")
    os.symlink("/etc/passwd", work / "out" / "passwd")
    os.symlink(outside, work / "out" / "dirlink")
    (outside / "secret").write_text("s")
    os.mkfifo(work / "out" / "fifo")
    listing = t.op_results_list({"workdir": str(work), "globs": ["out/**"]})["files"]
    assert listing == [["out/a", 1]]
    with pytest.raises(TransferError):
        t.op_results_read({"workdir": str(work), "path": "out/fifo"})
    with pytest.raises(TransferError):
        t.op_results_read({"workdir": str(work), "path": "out/passwd"})
    with pytest.raises(TransferError, match="bad path"):
        t.op_results_read({"workdir": str(work), "path": "../outside/secret"})
    got = t.op_results_read({"workdir": str(work), "path": "out/a", "offset": 0})
    assert base64.b64decode(got["data"]) == b"a"
