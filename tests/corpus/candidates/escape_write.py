# Escape: write outside the private directory through one file API (API), at import. Targets: the
# host's /tmp and /dev/shm (the sandbox's own, private ones in fact), a host directory the test
# chose (HOST_DIR), the candidate's own directory and file, and the task file (the host's, and the
# copy next to the candidate). A template: the test substitutes the placeholders. MODE "report"
# raises the outcomes (LOAD_ERROR); "silent" swallows every failure (API "all": every API at once,
# in forward) and computes a correct softmax (OK). Either way nothing may appear on the host.
# Expected: STATIC_REJECT; with the gate off as above.
import os
import pathlib
import shutil
import sqlite3

import numpy as np
import torch
import torch.nn as nn

API = "__API__"
MODE = "__MODE__"
MARKER = "__MARKER__"
HOST_DIR = "__HOST_DIR__"
TASK = "__TASK__"
HERE = os.path.dirname(os.path.abspath(__file__))
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


def _open(p):
    with open(p, "a") as f:
        f.write(MARKER)


def _os(p):
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, MARKER.encode())
    os.close(fd)


def _sqlite(p):
    con = sqlite3.connect(p)
    con.execute("create table escaped (x)")
    con.commit()
    con.close()


def _from_file(p):
    t = torch.from_file(p, shared=True, size=64, dtype=torch.uint8)
    t.fill_(7)


WRITERS = {
    "open": _open,
    "pathlib": lambda p: pathlib.Path(p).write_text(MARKER) and None,
    "os": _os,
    "numpy": lambda p: np.save(p, np.arange(4)),
    "torch": lambda p: torch.save(torch.arange(4), p),
    "from_file": _from_file,
    "shutil": lambda p: shutil.copy(__file__, p) and None,
    "mkdir": lambda p: os.mkdir(p),
    "sqlite": _sqlite,
    "symlink": lambda p: os.symlink("/etc/passwd", p),
    "hardlink": lambda p: os.link(__file__, p),
}


def attempt(api):
    write = WRITERS[api]
    name = f"kernelmap-escape-{MARKER}-{api}"
    probe("tmp", lambda: write(f"/tmp/{name}"))
    probe("shm", lambda: write(f"/dev/shm/{name}"))
    probe("host", lambda: write(f"{HOST_DIR}/{name}"))
    probe("here", lambda: write(f"{HERE}/{name}"))
    if api not in ("mkdir", "symlink", "hardlink", "sqlite"):  # those cannot replace a file
        probe("self", lambda: write(os.path.abspath(__file__)))
        probe("task", lambda: write(TASK))
        probe("jobtask", lambda: write(os.path.join(HERE, "task.py")))


if MODE == "report":
    attempt(API)
    raise RuntimeError(report())


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.done = False

    def forward(self, x):
        if not self.done:
            self.done = True
            for api in WRITERS if API == "all" else [API]:
                attempt(api)
        e = torch.exp(x - x.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=-1, keepdim=True)
