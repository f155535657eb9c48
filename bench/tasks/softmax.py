"""Bench task: softmax over dim 1 of a (4096, 393216) float32 matrix (KernelBench level 1, #23).

KernelBench draws this input with ``torch.rand``; on 393216-wide rows every softmax output of a
[0, 1) input is below 1e-5, so zeros would pass the default fp32 ``atol`` and the evaluator
refuses the task. ``torch.randn`` keeps the shape and the bytes moved and gives a usable task.

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
    """Row softmax."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


# Held-out shapes: a short row, and a row just past a power of two (tail of a looped kernel).
SHAPES = [lambda: [torch.randn(3, 77)], lambda: [torch.randn(5, 8195)]]


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []
