"""Hostile task: at import (in every process that loads it: validation, reference, baselines, the
candidate's), try to write files to the host (a host directory the test chose, /tmp and /dev/shm)
through several APIs, swallowing every failure; otherwise a correct softmax task. A template: the
test substitutes HOST_DIR and MARKER. Expected: the task is valid, a correct candidate is OK, and
no file appears on the host."""

import os

import numpy as np
import torch
import torch.nn as nn

HOST_DIR = "__HOST_DIR__"
MARKER = "__MARKER__"


def _open(p):
    with open(p, "a") as f:
        f.write(MARKER)


def _mkdir(p):
    os.makedirs(p, exist_ok=True)


for where in (HOST_DIR, "/tmp", "/dev/shm"):
    name = f"{where}/kernelmap-escape-{MARKER}-import-{os.getpid()}"
    for suffix, write in (
        ("open", _open),
        ("torch", lambda p: torch.save(torch.zeros(2), p)),
        ("numpy", lambda p: np.save(p, np.zeros(2))),
        ("mkdir", _mkdir),
    ):
        try:
            write(f"{name}-{suffix}")
        except Exception:
            pass


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.softmax(x, dim=-1)


def get_inputs():
    return [torch.randn(16, 300)]


def get_init_inputs():
    return []
