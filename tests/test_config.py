"""labqd's config: unknown keys and bad values stop it with the key's path."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labq.daemon.config import ConfigError, load


def write(tmp_path, text):
    p = tmp_path / "labq.toml"
    p.write_text(text)
    return p


def test_defaults_give_the_local_machine_as_the_only_node():
    cfg = load(None)
    assert len(cfg.nodes) == 1 and cfg.nodes[0].local
    assert cfg.database.name == "labq.db"


def test_nodes_replace_the_local_default(tmp_path):
    cfg = load(write(tmp_path, '[[node]]\nname = "gpu1"\nhost = "gpu1.example.org"\n'
                               'gpus = [{ type = "A100", memory_mb = 81920 }]\n'))
    assert [n.name for n in cfg.nodes] == ["gpu1"]
    assert cfg.nodes[0].gpus == [{"type": "A100", "memory_mb": 81920}]


@pytest.mark.parametrize("text,path", [
    ('[daemon]\nsockett = "/x"\n', "daemon.sockett"),
    ('[[node]]\nname = "a"\nhost = "h"\nport = "22"\n', "node[0].port"),
    ('[[node]]\nname = "a"\nhost = "h"\nport = 70000\n', "node[0].port"),
    ('[[node]]\nname = "a"\n', "node[0].host"),
    ('[[node]]\nname = "a"\nhost = "h"\ngpus = [{ memory_mb = 1 }]\n', "node[0].gpus[0].type"),
    ('[daemon]\nkill_grace = "soon"\n', "daemon.kill_grace"),
    ('[daemon]\nsocket_mode = "999"\n', "daemon.socket_mode"),
    ('[[node]]\nname = "a"\nhost = "h"\n[[node]]\nname = "a"\nhost = "h"\n', "node[1].name"),
    ('[groups.vision]\nshare = -1\n', "groups.vision.share"),
])
def test_bad_config_names_the_key(tmp_path, text, path):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text))
    assert e.value.path == path


def test_labqd_refuses_to_start_on_a_bad_config(tmp_path):
    p = write(tmp_path, '[daemon]\nadmin_groupp = "x"\n')
    r = subprocess.run([shutil.which("labqd"), "--config", str(p)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "daemon.admin_groupp" in r.stderr
    r = subprocess.run([shutil.which("labqd"), "--config", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "does not exist" in r.stderr


# -- checks across keys, through `labqd --check-config` as admins run it --------------------
def check_config(path, prefix=()):
    env = {k: v for k, v in os.environ.items() if k != "LABQ_CONFIG"}
    return subprocess.run([*prefix, shutil.which("labqd"), "--check-config", "--config",
                           str(path)], capture_output=True, text=True, timeout=60, env=env)


NODE_A = '[[node]]\nname = "a"\nhost = "h"\n'
LOCAL = '[[node]]\nname = "{}"\nlocal = true\n'
GONE = ("run_as_owner is gone: a node whose agent runs as root always runs jobs as their "
        "owners; remove the key")


@pytest.mark.parametrize("text,key,why", [
    ('[daemon]\nsocket_group = "labq-no-such-group"\n', "daemon.socket_group",
     "there is no group 'labq-no-such-group'"),
    ('[daemon]\nsocket_mode = "rw-rw----"\n', "daemon.socket_mode", "octal mode"),
    ('[daemon]\nsocket_mode = "0o660"\n', "daemon.socket_mode", "octal mode"),
    ('[daemon]\nsocket_mode = "0777"\n', "daemon.socket_mode", "execute bits"),
    ('[daemon]\nsocket_mode = "0700"\n', "daemon.socket_mode", "execute bits"),
    ('[daemon]\nsocket_mode = "4600"\n', "daemon.socket_mode", "setuid"),
    ('[daemon]\nsocket_mode = "1666"\n', "daemon.socket_mode", "sticky"),
    ('[daemon]\nsocket_mode = "0400"\n', "daemon.socket_mode", "owner"),
    ('[daemon]\nsocket_mode = "0640"\n', "daemon.socket_mode", "gives group 4"),
    ('[daemon]\nsocket_mode = "0606"\n', "daemon.socket_mode", "others more than the group"),
    ('[daemon]\nsocket_mode = "0660"\n', "daemon.socket_mode", "socket_group names none"),
    ('[daemon]\nsocket_group = "root"\nsocket_mode = "0600"\n', "daemon.socket_mode",
     "keeps socket_group 'root' out"),
    (LOCAL.format("a") + LOCAL.format("b"), "node[1].local",
     "node[0] is the local machine already"),
    ('[daemon]\nlocal_node = true\n' + NODE_A + LOCAL.format("b"), "daemon.local_node",
     "node[1] (b) is the local machine already"),
    ('[daemon]\nheartbeat = "30s"\nnode_timeout = "30s"\n', "daemon.heartbeat",
     "heartbeat (30s) must be shorter than node_timeout (30s)"),
    ('[daemon]\nnode_timeout = "5s"\n', "daemon.node_timeout",
     "heartbeat (5s) must be shorter than node_timeout (5s)"),
    ('[daemon]\nheartbeat = 0\n', "daemon.heartbeat", "at least 1s"),
    ('[daemon]\nnode_timeout = "1s"\nheartbeat = "1s"\n', "daemon.node_timeout",
     "at least 2s"),
    ('[scheduler]\ninterval = 0\n', "scheduler.interval", "at least 1s"),
    ('[scheduler]\ninterval = "0s"\n', "scheduler.interval", "at least 1s"),
    (NODE_A + "run_as_owner = true\n", "node[0].run_as_owner", GONE),
    (NODE_A + "run_as_owner = false\n", "node[0].run_as_owner", GONE),
    (NODE_A + 'agent_socket = "/run/labq-agent/agent.sock"\n', "node[0].agent_socket",
     "local node only"),
    (LOCAL.format("a") + 'agent_socket = "agent.sock"\n', "node[0].agent_socket",
     "absolute path"),
    (LOCAL.format("a") + 'agent_socket = "/run/a.sock"\nshared_account = true\n',
     "node[0].shared_account", "runs as root"),
    ('[daemon]\nsocket_mode = "0666"\n' + LOCAL.format("a") + "shared_account = true\n",
     "node[0].shared_account", "as labqd's own account"),
    (NODE_A + 'shared_account = "yes"\n', "node[0].shared_account", "true or false"),
])
def test_check_config_refuses_and_names_the_key(tmp_path, text, key, why):
    r = check_config(write(tmp_path, text))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith(f"labqd: config error: {key}: "), r.stderr
    assert why in r.stderr, r.stderr


@pytest.mark.parametrize("text,shown", [
    ('[daemon]\nsocket_mode = "0666"\n', "mode 0666)"),
    ('[daemon]\nsocket_mode = "600"\n', "mode 0600)"),
    ('[daemon]\nsocket_group = "root"\n', "mode 0660, group root)"),
    ('[daemon]\nsocket_group = "root"\nsocket_mode = "0666"\n', "mode 0666, group root)"),
    ('[daemon]\nheartbeat = "1s"\nnode_timeout = "2s"\n', "node "),
    (LOCAL.format("head") + 'agent_socket = "/run/labq-agent/agent.sock"\n',
     "head (local) via /run/labq-agent/agent.sock"),
    # a per-user daemon serves only its user: sharing its account is that user's business
    (LOCAL.format("head") + "shared_account = true\n", "head (local) shared account"),
    (NODE_A + "shared_account = true\n", "a (h) shared account"),
])
def test_check_config_accepts(tmp_path, text, shown):
    r = check_config(write(tmp_path, text))
    assert r.returncode == 0, r.stderr
    assert shown in r.stdout, r.stdout


def test_new_node_keys_reach_the_node_config(tmp_path):
    cfg = load(write(tmp_path, LOCAL.format("head") + 'agent_socket = "/run/x/agent.sock"\n'
                     + NODE_A + "shared_account = true\n"))
    head, a = cfg.nodes
    assert (head.agent_socket, head.shared_account) == (Path("/run/x/agent.sock"), False)
    assert (a.agent_socket, a.shared_account) == (None, True)
    assert cfg.config_dir == Path(os.path.realpath(tmp_path))


def test_heartbeat_and_timeout_are_taken_as_given(tmp_path):
    cfg = load(write(tmp_path, '[daemon]\nheartbeat = "1s"\nnode_timeout = "2s"\n'))
    assert (cfg.heartbeat_s, cfg.node_timeout_s) == (1, 2)


def test_unreadable_config_is_a_config_error(tmp_path):
    p = write(tmp_path, "[daemon]\n")
    p.chmod(0)
    # root reads any file; without these capabilities it meets the mode like anyone else
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
              if os.geteuid() == 0 else [])
    r = check_config(p, prefix)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr == f"labqd: config error: cannot read {p}: Permission denied\n"


def test_a_directory_is_no_config(tmp_path):
    r = check_config(tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"labqd: config error: cannot read {tmp_path}: Is a directory\n"


@pytest.mark.parametrize("text, where", [
    ('[notify.mail]\nfrom = "a@b"\n', "notify.mail"),
    ('[notify.mail]\nsendmail = "/usr/sbin/sendmail"\nsmtp_host = "relay"\n', "notify.mail"),
    ('[notify.webhook]\nallow_hosts = ["https://x/"]\n', "notify.webhook.allow_hosts[0]"),
    ('[notify.webhook]\ntimeout = "5s"\n', "notify.webhook.allow_hosts"),
    ('[notify.command]\nargv = ["hook", "{id}"]\n', "notify.command.argv"),
    ('[notify.command]\nargv = ["/bin/hook", "{id}", "{env}"]\n', "notify.command.argv[2]"),
    ('[notify]\nmax_attempts = 0\n', "notify.max_attempts"),
    ('[notify.mail]\nsmtp_host = "relay"\nca_file = "/etc/ca.pem"\n', "notify.mail.ca_file"),
    ('[notify.mail]\nsmtp_host = "relay.example.org"\nusername = "labq"\n'
     'password_file = "/etc/labq/smtp"\n', "notify.mail.username"),
])
def test_bad_notify_settings_name_the_key(tmp_path, text, where):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text))
    assert str(e.value).startswith(where + ":")


def test_the_notify_command_gets_each_value_as_its_own_argument():
    from labq.daemon.channels import command_argv, host_allowed
    payload = {"id": 7, "name": "x; rm -rf / $(id) {user}", "user": "alice",
               "state": "FAILED", "exit_code": None, "node": "n1", "runtime": 12}
    assert command_argv(["/bin/hook", "{id}", "--name={name}", "{exit_code}", "{user}"],
                        payload) == ["/bin/hook", "7", "--name=x; rm -rf / $(id) {user}", "",
                                     "alice"]
    assert host_allowed("a.lab.org", ["*.lab.org"]) and not host_allowed("lab.org.evil",
                                                                          ["*.lab.org"])
    assert not host_allowed("evillab.org", ["*.lab.org"])


def test_a_relay_on_this_machine_may_take_a_password_without_starttls(tmp_path):
    cfg = load(write(tmp_path, '[notify.mail]\nsmtp_host = "localhost"\nusername = "labq"\n'
                               'password_file = "/etc/labq/smtp"\n'))
    assert cfg.notify["mail"]["username"] == "labq"
