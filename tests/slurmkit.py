"""A real one-node Slurm cluster in a temp dir, for tests: munged, slurmctld and slurmd from
Debian's slurm-wlm and munge, with four fake GPUs (character devices that Slurm's gres
plugin hands out like real ones) and no accounting database.

Its own slurm.conf is found through SLURM_CONF, so the machine's /etc/slurm is never read;
the ports are picked free so that two test runs on one machine do not meet.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

FAKE_GPUS = 4
CONF = """\
ClusterName=labqtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=64
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=5
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:fake:{ngpus} State=UNKNOWN
PartitionName=gpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], env: dict | None = None) -> None:
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


class SlurmCluster:
    """Started by `with SlurmCluster(dir) as slurm:`; `slurm.env` has SLURM_CONF for clients."""

    def __init__(self, workdir: Path, cpus: int | None = None):
        self.dir = Path(workdir)
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or max(2, os.cpu_count() or 2)
        self.conf = self.dir / "slurm.conf"
        self.munge_dir = self.dir / "munge"
        self.munge_socket = self.munge_dir / "sock"

    @property
    def env(self) -> dict:
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "log", "munge", "gpus"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # every user's sbatch talks to munged, and slurmd reads the gres devices
        self.dir.chmod(0o755)
        self.munge_dir.chmod(0o755)
        key = self.dir / "munge.key"
        shutil.copyfile("/etc/munge/munge.key", key) if Path(
            "/etc/munge/munge.key").exists() else key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        for i in range(FAKE_GPUS):
            dev = self.dir / "gpus" / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
        self.conf.write_text(CONF.format(
            host=self.host, d=self.dir, munge_socket=self.munge_socket, cpus=self.cpus,
            mem=4096, ngpus=FAKE_GPUS, ctld_port=_free_port(), slurmd_port=_free_port()))
        (self.dir / "gres.conf").write_text(
            f"NodeName={self.host} Name=gpu Type=fake "
            f"File={self.dir}/gpus/fakegpu[0-{FAKE_GPUS - 1}]\n")

    def start(self) -> SlurmCluster:
        self._write_conf()
        _run(["munged", "--force", f"--socket={self.munge_socket}",
              f"--key-file={self.dir / 'munge.key'}", f"--log-file={self.dir / 'log/munged.log'}",
              f"--pid-file={self.munge_dir / 'pid'}", f"--seed-file={self.munge_dir / 'seed'}"])
        _run(["slurmctld", "-i"], env=self.env)
        _run(["slurmd"], env=self.env)
        self.wait_idle()
        return self

    def wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.cmd("sinfo", "-h", "-o", "%t")
            if out.strip() in ("idle", "mix", "alloc"):
                return
            time.sleep(0.3)
        raise RuntimeError(f"the Slurm node did not come up: {out!r}\n" + self.logs())

    def cmd(self, *argv: str, check: bool = False) -> str:
        r = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"{argv}: {r.stderr}")
        return r.stdout

    def sbatch(self, *args: str) -> int:
        return int(self.cmd("sbatch", "--parsable", "--output=/dev/null", *args,
                            check=True).split(";")[0])

    def job(self, slurm_id: int) -> dict:
        """`scontrol show job` as a dict of its Key=Value fields."""
        out = self.cmd("scontrol", "-o", "show", "job", str(slurm_id))
        return dict(f.split("=", 1) for f in out.split() if "=" in f)

    def logs(self) -> str:
        parts = []
        for f in ("slurmctld.log", "slurmd.log"):
            p = self.dir / "log" / f
            if p.exists():
                parts.append(f"--- {f}\n" + "\n".join(p.read_text().splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        for pidfile in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            p = self.dir / pidfile
            try:
                os.kill(int(p.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                continue
        time.sleep(0.5)

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
