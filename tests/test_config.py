"""labqd's config: unknown keys and bad values stop it with the key's path."""
import shutil
import subprocess

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
