"""What a node has: GPUs (NVML, else nvidia-smi), CPUs, memory, load."""
import os
import shutil
import socket
import subprocess
import sys

SMI_QUERY = "index,name,memory.total,memory.used,utilization.gpu,uuid"


# -- probing -------------------------------------------------------------------------------
def parse_nvidia_smi(text):
    """Parse `nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader,nounits` output."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue

        def num(i, parts=parts):
            try:
                return int(float(parts[i]))
            except (IndexError, ValueError):
                return None  # "[N/A]", "[Not Supported]"
        gpus.append({"index": int(parts[0]), "type": parts[1], "memory_mb": num(2) or 0,
                     "memory_used_mb": num(3), "utilization": num(4),
                     "uuid": parts[5] if len(parts) > 5 and parts[5].startswith("GPU-") else None})
    return gpus


def probe_nvml():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old pynvml wrapper warns on import
        import pynvml  # raises ImportError where absent
    pynvml.nvmlInit()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
            except pynvml.NVMLError:
                util = None
            gpus.append({"index": i, "type": name.decode() if isinstance(name, bytes) else name,
                         "memory_mb": int(mem.total) >> 20, "memory_used_mb": int(mem.used) >> 20,
                         "utilization": util,
                         "uuid": uuid.decode() if isinstance(uuid, bytes) else uuid})
        return gpus
    finally:
        pynvml.nvmlShutdown()


def probe_smi():
    exe = shutil.which("nvidia-smi")
    if not exe:
        raise FileNotFoundError("nvidia-smi not found on PATH")
    out = subprocess.run([exe, "--query-gpu=" + SMI_QUERY, "--format=csv,noheader,nounits"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                         universal_newlines=True)
    if out.returncode != 0:
        raise RuntimeError("nvidia-smi exited %d: %s" % (out.returncode, out.stderr.strip()[:200]))
    return parse_nvidia_smi(out.stdout)


def probe_gpus(prefer=None):
    """(source, gpus, notes): NVML, else nvidia-smi, else none."""
    notes = []
    for source, fn in (("nvml", probe_nvml), ("nvidia-smi", probe_smi)):
        if prefer and source != prefer:
            continue
        try:
            return source, fn(), notes
        except ImportError:
            notes.append("nvml: pynvml not installed")
        except Exception as e:  # no driver, no device, tool missing
            notes.append("%s: %s" % (source, str(e) or type(e).__name__))
    return "none", [], notes


def probe_host():
    try:
        import psutil
        cpus = len(psutil.Process().cpu_affinity() or []) or psutil.cpu_count()
        mem = psutil.virtual_memory().total >> 20
    except Exception:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        mem = meminfo().get("MemTotal", 0) >> 10
    return {"cpus": cpus or 1, "memory_mb": mem, "hostname": socket.gethostname(),
            "python": sys.version.split()[0]}


def meminfo():
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


class CpuMeter:
    """CPU use since the previous reading, from psutil or /proc/stat."""

    def __init__(self):
        self.prev = self._times()

    @staticmethod
    def _times():
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            return sum(vals), idle
        except (OSError, ValueError, IndexError):
            return None

    def percent(self):
        now = self._times()
        prev, self.prev = self.prev, now
        if not now or not prev or now[0] == prev[0]:
            return None
        return round(100.0 * (1 - (now[1] - prev[1]) / float(now[0] - prev[0])), 1)
