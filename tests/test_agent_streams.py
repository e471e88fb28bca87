"""The node's side of keeping stderr apart, on real pipes and files without a job: the
shepherd's copies land with their exact ranges however stdout interleaves, and the agent's
reads find every range of the bytes they read."""
import fcntl
import os

from labq.daemon.nodes.agent.streams import ERR_NAME, ErrCopier, RunLog


def stdout_of(jobdir):
    """A descriptor like the job's fd 1: its own O_APPEND open of the log."""
    return os.open(os.path.join(jobdir, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)


def read_all(run, size):
    out, err, offset = b"", b"", 0
    while True:
        data, spans = run.read(offset, size)
        if not data:
            return out, err
        at = offset
        for s, e in spans:
            out, err, at = out + data[at - offset:s - offset], err + data[s - offset:e - offset], e
        out += data[at - offset:]
        offset += len(data)


def test_copies_land_with_their_ranges_between_stdout_writes(tmp_path):
    copier = ErrCopier(str(tmp_path))
    stdout = stdout_of(str(tmp_path))
    for i in range(50):
        os.write(stdout, b"out%d\n" % i)
        os.write(copier.wfd, b"err%d\n" % i)
        if i % 7 == 0:
            copier.pump()  # sometimes several writes wait in the pipe, copied as one
    copier.forked()
    copier.drain(1.0)
    assert copier.fds() == []  # every writer gone: the pipe is closed
    want_out = b"".join(b"out%d\n" % i for i in range(50))
    want_err = b"".join(b"err%d\n" % i for i in range(50))
    for size in (1, 7, 4096):  # whatever the agent's chunk size, the split is exact
        assert read_all(RunLog(str(tmp_path)), size) == (want_out, want_err)
    lines = (tmp_path / ERR_NAME).read_text().splitlines()
    assert all(len(line.split()) == 2 for line in lines)


def test_a_read_from_further_back_finds_the_ranges_again(tmp_path):
    copier = ErrCopier(str(tmp_path))
    stdout = stdout_of(str(tmp_path))
    os.write(stdout, b"aa")
    os.write(copier.wfd, b"EE")
    copier.pump()
    os.write(stdout, b"bb")
    run = RunLog(str(tmp_path))
    assert run.read(0, 100) == (b"aaEEbb", [[2, 4]])
    assert run.read(6, 100) == (b"", [])
    assert run.read(3, 2) == (b"Eb", [[3, 4]])  # a new watch from an earlier offset


def test_a_run_without_the_stderr_file_is_all_stdout(tmp_path):
    (tmp_path / "log").write_bytes(b"old run\n")
    assert RunLog(str(tmp_path)).read(0, 100) == (b"old run\n", [])


def test_no_read_while_a_copy_is_half_done(tmp_path):
    ErrCopier(str(tmp_path))
    (tmp_path / "log").write_bytes(b"x")
    run = RunLog(str(tmp_path))
    held = os.open(tmp_path / ERR_NAME, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as the shepherd holds it between its two writes
    assert run.read(0, 100) is None
    fcntl.flock(held, fcntl.LOCK_UN)
    assert run.read(0, 100) == (b"x", [])


def test_drain_gives_up_on_a_writer_that_never_closes(tmp_path):
    copier = ErrCopier(str(tmp_path))
    keeper = os.dup(copier.wfd)  # as a process that escaped the job's containment
    os.write(copier.wfd, b"last words\n")
    copier.forked()
    copier.drain(0.2)
    assert copier.fds() != []
    assert (tmp_path / "log").read_bytes() == b"last words\n"
    os.close(keeper)
