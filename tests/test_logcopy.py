"""labqd's log copies keep where the stderr bytes are: shifted to the copy's offsets, through
re-sent chunks, requeue marks, the cap and removal. Pure: a LogCopies over a temp directory."""
import struct

from labq.daemon.logcopy import LogCopies


def copies(tmp_path, cap=1 << 20):
    return LogCopies(tmp_path, cap)


def split(logs, job):
    """(stdout, stderr) of a copy, as a follower would see them."""
    data = logs.read(job, 0, 1 << 30)
    out, err, at = b"", b"", 0
    for s, e in logs.err_spans(job, 0, len(data)):
        out, err, at = out + data[at:s], err + data[s:e], e
    return out + data[at:], err


def test_ranges_follow_the_bytes_into_the_copy(tmp_path):
    logs = copies(tmp_path)
    logs.append(1, 0, b"out\nerr\n", "n", "/p", [(4, 8)])
    logs.append(1, 8, b"more-err\nout2\n", "n", "/p", [(8, 17)])
    logs.append(1, 22, b"out3\n", "n", "/p")
    assert split(logs, 1) == (b"out\nout2\nout3\n", b"err\nmore-err\n")
    # touching ranges are one record
    assert (tmp_path / "1.err").stat().st_size == 16
    # a reader of part of the log gets the ranges within that part only
    assert logs.err_spans(1, 6, 20) == [(6, 17)]
    assert logs.err_spans(1, 0, 4) == []


def test_a_resent_chunk_keeps_its_ranges_once(tmp_path):
    logs = copies(tmp_path)
    logs.append(1, 0, b"aaERR", "n", "/p", [(2, 5)])
    logs.received.clear()  # as after a labqd restart
    logs.append(1, 0, b"aaERRbbERR", "n", "/p", [(2, 5), (7, 10)])
    assert split(logs, 1) == (b"aabb", b"ERRERR")


def test_ranges_written_before_a_crash_lost_their_bytes_are_dropped(tmp_path):
    logs = copies(tmp_path)
    logs.append(1, 0, b"out\n", "n", "/p")
    # a record for bytes that never reached the copy
    with open(tmp_path / "1.err", "wb") as f:
        f.write(struct.pack("<QQ", 4, 20))
    logs.append(1, 4, b"plain\n", "n", "/p")
    logs.append(1, 10, b"e\n", "n", "/p", [(10, 12)])
    assert split(logs, 1) == (b"out\nplain\n", b"e\n")


def test_requeue_marks_and_the_truncation_note_are_stderr(tmp_path):
    logs = copies(tmp_path, cap=150)
    logs.append(1, 0, b"run0\n", "n", "/p")
    logs.new_run(1, 0, "node lost")
    logs.append(1, 0, b"x" * 100, "n", "/p", [(10, 20)])
    out, err = split(logs, 1)
    assert out.startswith(b"run0\n") and b"requeued" not in out and b"truncated" not in out
    assert b"[labq: run 0 ended: node lost; the job was requeued]" in err
    assert b"[labq: log truncated at 150 bytes" in err
    assert err.count(b"x") == 10  # the job's stderr bytes that fit under the cap


def test_removal_takes_the_ranges_too(tmp_path):
    logs = copies(tmp_path)
    logs.append(1, 0, b"e\n", "n", "/p", [(0, 2)])
    assert logs.remove(1) > 0
    assert not (tmp_path / "1.err").exists() and logs.err_spans(1, 0, 10) == []


def test_a_copy_without_ranges_is_all_stdout(tmp_path):
    logs = copies(tmp_path)
    logs.append(1, 0, b"old\n", "n", "/p")
    assert not (tmp_path / "1.err").exists()
    assert split(logs, 1) == (b"old\n", b"")


def test_ranges_count_against_the_cap(tmp_path):
    logs = copies(tmp_path, cap=4096)
    # a stream switch every other byte: the ranges would outgrow the log eightfold
    data = b"oe" * 2000
    logs.append(1, 0, data, "n", "/p", [(i, i + 1) for i in range(1, len(data), 2)])
    log_bytes = len(logs.read(1, 0, 1 << 20))
    assert log_bytes + (tmp_path / "1.err").stat().st_size <= 4096 + 16 + 200
    assert b"[labq: log truncated at 4096 bytes" in logs.read(1, 0, 1 << 20)
