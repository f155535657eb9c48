"""Example task: softmax over dim 1 of a (64, 1000) float32 matrix (KernelBench format)."""

import torch
import torch.nn as nn


class Model(nn.Module):
    """Row-wise softmax."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


B, N = 64, 1000

# Held-out shapes: a tiny row, and a row just past a power of two (catches BLOCK = n_cols assumptions).
SHAPES = [lambda: [torch.randn(3, 77)], lambda: [torch.randn(17, 4099)]]


def get_inputs():
    return [torch.randn(B, N)]


def get_init_inputs():
    return []
