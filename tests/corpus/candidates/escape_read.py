# Escape: read host files (the host's own /etc files, a file in a host directory the test chose, the
# system's host name) and follow inherited file descriptors, then hand it all back in the error
# message (RUNTIME_ERROR, on the first call). A template: the test substitutes HOST_DIR. Expected:
# STATIC_REJECT; with the gate off RUNTIME_ERROR, and the message holds nothing of the host.
import os

import torch.nn as nn

HOST_DIR = "__HOST_DIR__"
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


def read(path, n=80):
    with open(path, errors="replace") as f:
        return f.read(n).strip()


def fds():
    out = []
    for n in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            out.append(f"{n}>{os.readlink(f'/proc/self/fd/{n}')}")
        except OSError:
            pass
    return ",".join(out)


def dir_fds():
    # An inherited descriptor of a host directory would lead out of the private root.
    found = []
    for n in os.listdir("/proc/self/fd"):
        p = f"/proc/self/fd/{n}"
        if os.path.isdir(p):
            found.append(f"{n}:{','.join(sorted(os.listdir(p + '/..')))[:60]}")
    return ";".join(found) or "none"


class ModelNew(nn.Module):
    def forward(self, x):
        probe("hostname", lambda: read("/etc/hostname"))
        probe("passwd", lambda: read("/etc/passwd", 40))
        probe("shadow", lambda: read("/etc/shadow", 40))
        probe("osrel", lambda: read("/etc/os-release", 40))
        probe("secret", lambda: read(HOST_DIR + "/known.txt"))
        probe("uname", lambda: os.uname().nodename)
        probe("kernhost", lambda: read("/proc/sys/kernel/hostname"))
        probe("dirfds", dir_fds)
        probe("fds", fds)
        raise RuntimeError(report())
