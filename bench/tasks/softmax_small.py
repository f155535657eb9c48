"""Bench task: softmax over dim 1 of a (64, 1000) float32 matrix, for quick runs (not scaled)."""

import torch
import torch.nn as nn

batch_size = 64
dim = 1000


class Model(nn.Module):
    """Row softmax."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


# Held-out shapes: a short row, and a row just past a power of two.
SHAPES = [lambda: [torch.randn(3, 77)], lambda: [torch.randn(17, 4099)]]


def get_inputs():
    return [torch.randn(batch_size, dim)]


def get_init_inputs():
    return []
