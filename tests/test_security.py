"""The RPyC surface: only exposed methods, values only, identity from the socket."""
import os
import stat

import pytest
import rpyc
from daemonproc import Daemon, as_user, raw_connect
from sshnodes import ensure_user

import labq
from labq.errors import DaemonUnavailable


@pytest.fixture(scope="module")
def local_daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("sec"), {"daemon": {"local_node": True}})
    d.start(wait_nodes=1)
    yield d
    d.close()


def raw(d):
    return raw_connect(d.socket, service=rpyc.VoidService,
                        config={"allow_pickle": False, "sync_request_timeout": 10})


def test_socket_is_private_by_default(local_daemon):
    assert stat.S_IMODE(os.stat(local_daemon.socket).st_mode) == 0o600
    uid, gid = ensure_user("labqtest")

    def try_connect():
        try:
            labq.connect(local_daemon.socket).ping()
            return "connected"
        except DaemonUnavailable as e:
            return e.code
    assert as_user(uid, gid, try_connect) == "UNAVAILABLE"


def test_only_exposed_methods_are_reachable(local_daemon):
    conn = raw(local_daemon)
    try:
        for name in ("core", "caller", "handlers", "_ids", "on_connect", "__dict__"):
            with pytest.raises(AttributeError):
                getattr(conn.root, name)
        with pytest.raises(Exception):
            conn.root.exposed_call.__globals__
        # classic mode is not offered
        with pytest.raises(Exception):
            conn.modules.os.getpid()
        with pytest.raises(Exception):
            conn.eval("1+1")
    finally:
        conn.close()


def test_netrefs_are_refused_without_being_touched(local_daemon):
    touched = []

    class Trap:
        def __str__(self):
            touched.append("str")
            return "jobs"

        def __iter__(self):
            touched.append("iter")
            return iter([])

        def __getattr__(self, name):
            touched.append(name)
            raise AttributeError(name)

    class Client(rpyc.Service):
        pass
    conn = raw_connect(local_daemon.socket, service=Client,
                        config={"allow_public_attrs": True, "allow_all_attrs": True})
    try:
        reply = conn.root.call(Trap(), "{}")
        assert "VALIDATION_ERROR" in reply
        data, _offset, _done, err = conn.root.read_log(Trap(), 0, 0.0, 10)
        assert data == b"" and "VALIDATION_ERROR" in err
        # nor as the fifth argument, which asks for the stderr ranges
        data, _offset, _done, err = conn.root.read_log(1, 0, 0.0, 10, Trap())
        assert data == b"" and "VALIDATION_ERROR" in err and "streams" in err
    finally:
        conn.close()
    # rpyc's own boxing probes dunder names on the client side; the daemon never used the
    # object: no str(), no iteration, no attribute of ours
    assert not [t for t in touched if not t.startswith("__")]


def test_results_are_plain_values(local_daemon):
    conn = raw(local_daemon)
    try:
        reply = conn.root.call("ping", "{}")
        assert type(reply) is str
        data = conn.root.read_log(1, 0, 0.0, 10)
        assert type(data) is tuple
    finally:
        conn.close()


def test_malformed_requests_get_typed_errors(local_daemon):
    with local_daemon.client() as q:
        with pytest.raises(labq.errors.ValidationError, match="unknown request"):
            q.call("drop_tables")
        with pytest.raises(labq.errors.ValidationError):
            q.call("cancel", ids="1; rm")
        with pytest.raises(labq.errors.NotFound):
            q.job(999999)
        with pytest.raises(labq.errors.ValidationError):
            q.call("job", id="1")
    conn = raw(local_daemon)
    try:
        assert "bad JSON" in conn.root.call("ping", "{not json")
    finally:
        conn.close()


def test_system_socket_is_shared_with_its_group_only(tmp_path):
    import grp
    import pwd
    uid, gid = ensure_user("labqtest")
    d = Daemon(tmp_path, {"daemon": {"local_node": True, "socket_group": "labqtest"}})
    d.start(wait_nodes=1)
    try:
        st = os.stat(d.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and grp.getgrgid(st.st_gid).gr_name == "labqtest"

        def whoami():
            try:
                return labq.connect(d.socket).whoami()["user"]
            except DaemonUnavailable as e:
                return e.code
        assert as_user(uid, gid, whoami) == "labqtest"  # a member of the socket's group
        nobody = pwd.getpwnam("nobody")
        assert as_user(nobody.pw_uid, nobody.pw_gid, whoami) == "UNAVAILABLE"
    finally:
        d.close()
