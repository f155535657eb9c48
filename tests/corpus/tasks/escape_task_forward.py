"""Hostile task: validation sees a correct softmax, but in the reference process (where the judge's
expected outputs are computed) forward() tries to write to the host, signal the judge (its real
pid substituted by the test), and raises what it found of the host (a host directory's listing and
a file in it, the environment's secrets, the processes it sees, the files next to it: the
candidate's source must not be among them). A template: the test substitutes
HOST_DIR, MARKER and JUDGE_PID. Expected: a harmless failure of the evaluation (the reference
failed), nothing written, nothing of the host in the messages, and the judge alive."""

import os
import signal
import sys

import torch
import torch.nn as nn

HOST_DIR = "__HOST_DIR__"
MARKER = "__MARKER__"
JUDGE = int("__JUDGE_PID__")
PATTERNS = ("KERNELMAP", "URL", "KEY", "TOKEN", "SECRET", "PASS", "DATABASE", "BROKER", "AWS")
R = {}


def probe(name, fn):
    try:
        value = fn()
        R[name] = "ok" if value is None else str(value)
    except OSError as e:
        R[name] = f"E{e.errno}" if e.errno else type(e).__name__
    except Exception as e:
        R[name] = type(e).__name__


def report():
    return "ESCAPE[" + "|".join(f"{k}={v.replace('|', '/').replace(']', ')')}" for k, v in R.items()) + "]"


def read(path):
    with open(path) as f:
        return f.read(80)


def write(path):
    with open(path, "w") as f:
        f.write(MARKER)


def in_reference_process():
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_expected":  # ReferenceRole._expected
            return True
        frame = frame.f_back
    return False


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        if in_reference_process():
            probe("write_host", lambda: write(f"{HOST_DIR}/kernelmap-escape-{MARKER}-forward"))
            probe("write_shm", lambda: write(f"/dev/shm/kernelmap-escape-{MARKER}-forward"))
            probe("kill_judge", lambda: os.kill(JUDGE, signal.SIGTERM))
            probe("ls_host", lambda: ",".join(sorted(os.listdir(HOST_DIR))))
            probe("secret", lambda: read(HOST_DIR + "/known.txt"))
            probe("env", lambda: str({k: v for k, v in os.environ.items() if any(p in k for p in PATTERNS)}))
            probe("ls_job", lambda: ",".join(sorted(os.listdir(os.path.dirname(os.path.abspath(__file__))))))
            probe("pids", lambda: ",".join(p for p in os.listdir("/proc") if p.isdigit()))
            raise RuntimeError(report())
        return torch.softmax(x, dim=-1)


def get_inputs():
    return [torch.randn(16, 300)]


def get_init_inputs():
    return []
