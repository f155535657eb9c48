"""Bench task: LayerNorm over the last 3 dims of a (16, 64, 256, 256) float32 tensor
(KernelBench level 1, #40): every row holds 4M elements.

The layer lives in ``self.ln`` so candidates can match the state_dict keys (``ln.weight``,
``ln.bias``). ``KERNELMAP_BENCH_SCALE`` divides the last dim and ``KERNELMAP_BENCH_BATCH_SCALE``
the batch (both default 1), so the bench can run a scaled-down copy (``--small``).
"""

import os

import torch
import torch.nn as nn

SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_SCALE", "1")))
BATCH_SCALE = max(1, int(os.environ.get("KERNELMAP_BENCH_BATCH_SCALE", "1")))

batch_size = max(1, 16 // BATCH_SCALE)
features = 64
dim1 = 256
dim2 = max(1, 256 // SCALE)


class Model(nn.Module):
    """LayerNorm with elementwise affine over (features, dim1, dim2)."""

    def __init__(self, normalized_shape: tuple):
        super().__init__()
        self.ln = nn.LayerNorm(normalized_shape=normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


# Held-out shape: another batch size.
SHAPES = [lambda: [torch.randn(2, features, dim1, dim2)]]


def get_inputs():
    return [torch.randn(batch_size, features, dim1, dim2)]


def get_init_inputs():
    return [(features, dim1, dim2)]
