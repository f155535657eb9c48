"""Bench task: cross-entropy of (32768, 4096) float32 logits against int64 targets, mean
reduction (KernelBench level 1, #95).

``KERNELMAP_BENCH_SCALE`` divides the number of classes and ``KERNELMAP_BENCH_BATCH_SCALE`` the
batch.
"""

import os

import torch
import torch.nn as nn

SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_SCALE", "1")))
BATCH_SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_BATCH_SCALE", "1")))

batch_size = max(1, 32768 // BATCH_SCALE)
num_classes = max(2, 4096 // SCALE)


class Model(nn.Module):
    """Mean cross-entropy loss."""

    def __init__(self):
        super().__init__()

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(predictions, targets)


SHAPES = [lambda: [torch.randn(5, 1037), torch.randint(0, 1037, (5,))]]


def get_inputs():
    return [torch.randn(batch_size, num_classes), torch.randint(0, num_classes, (batch_size,))]


def get_init_inputs():
    return []
