"""Bench task: a pointwise chain eager does not fuse, MinGPT's tanh GELU on (8192, 8192)
float32 (KernelBench level 1, #88).

``KERNELMAP_BENCH_SCALE`` divides the last dim and ``KERNELMAP_BENCH_BATCH_SCALE`` the first.
"""

import math
import os

import torch
import torch.nn as nn

SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_SCALE", "1")))
BATCH_SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_BATCH_SCALE", "1")))

rows = max(1, 8192 // BATCH_SCALE)
cols = max(1, 8192 // SCALE)


class Model(nn.Module):
    """0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))
        return 0.5 * x * (1.0 + torch.tanh(inner))


SHAPES = [lambda: [torch.randn(3, 77)]]


def get_inputs():
    return [torch.randn(rows, cols)]


def get_init_inputs():
    return []
