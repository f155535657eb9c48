"""Probe task: ReLU of a 1 GiB float32 tensor (4096 x 65536 = 256M elements), a bandwidth-bound
kernel whose time ``bench/gpu_preflight.py`` compares with a device-to-device copy.

``KERNELMAP_PROBE_ROWS`` replaces the row count (default 4096), so the CPU dry run can use a few
MB (the rows are 65536 wide: 8 rows are 2 MiB).
"""

import os

import torch
import torch.nn as nn

rows = max(1, int(os.environ.get("KERNELMAP_PROBE_ROWS", "4096")))
cols = 65536


class Model(nn.Module):
    """ReLU."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


SHAPES = [lambda: [torch.randn(3, 77)]]


def get_inputs():
    return [torch.randn(rows, cols)]


def get_init_inputs():
    return []
