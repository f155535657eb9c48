"""Hostile task: get_inputs() gathers what it can of the host (a host directory's listing and a file
in it, /root, the environment's secrets, the processes it sees, a write to the host directory) and
raises it, so validation hands it back as the reason the task is invalid. A template: the test
substitutes HOST_DIR and MARKER. Expected: the task is refused (TaskError), and the reason holds
nothing of the host."""

import os

import torch
import torch.nn as nn

HOST_DIR = "__HOST_DIR__"
MARKER = "__MARKER__"
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


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x, dim=-1)


def get_inputs():
    probe("ls_host", lambda: ",".join(sorted(os.listdir(HOST_DIR))))
    probe("secret", lambda: read(HOST_DIR + "/known.txt"))
    probe("ls_root", lambda: ",".join(sorted(os.listdir("/root"))))
    probe("env", lambda: str({k: v for k, v in os.environ.items() if any(p in k for p in PATTERNS)}))
    probe("ls_job", lambda: ",".join(sorted(os.listdir(os.path.dirname(os.path.abspath(__file__))))))
    probe("pids", lambda: ",".join(p for p in os.listdir("/proc") if p.isdigit()))
    probe("write_host", lambda: write(f"{HOST_DIR}/kernelmap-escape-{MARKER}-task"))
    probe("write_tmp", lambda: write(f"/tmp/kernelmap-escape-{MARKER}-task"))
    raise RuntimeError(report())


def get_init_inputs():
    return []
