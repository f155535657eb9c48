"""Bench task: elementwise ReLU of a (4096, 393216) float32 matrix (KernelBench level 1, #19).

``KERNELMAP_BENCH_SCALE`` divides the row length and ``KERNELMAP_BENCH_BATCH_SCALE`` the row
count (both default 1), so the bench can run a scaled-down copy (``--small``).
"""

import os

import torch
import torch.nn as nn

SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_SCALE", "1")))
BATCH_SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_BATCH_SCALE", "1")))

batch_size = max(1, 4096 // BATCH_SCALE)
dim = max(1, 393216 // SCALE)


class Model(nn.Module):
    """ReLU."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


# Held-out shapes whose sizes are not multiples of a power-of-two block.
SHAPES = [lambda: [torch.randn(3, 77)], lambda: [torch.randn(7, 4099)]]


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []
