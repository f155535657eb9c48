"""Bench task: RMSNorm over dim 1 of a (112, 64, 512, 512) float32 tensor (KernelBench level 1,
#36): each (b, h, w) position is normalised over its 64 features, which are strided in memory.

``KERNELMAP_BENCH_SCALE`` divides the last dim and ``KERNELMAP_BENCH_BATCH_SCALE`` the batch.
"""

import os

import torch
import torch.nn as nn

SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_SCALE", "1")))
BATCH_SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_BATCH_SCALE", "1")))

batch_size = max(1, 112 // BATCH_SCALE)
features = 64
dim1 = 512
dim2 = max(1, 512 // SCALE)


class Model(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + eps), as KernelBench writes it."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + self.eps)
        return x / rms


SHAPES = [lambda: [torch.randn(2, features, 7, 33)]]


def get_inputs():
    return [torch.randn(batch_size, features, dim1, dim2)]


def get_init_inputs():
    return [features]
