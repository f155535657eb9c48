"""Corpus task: LayerNorm(256) with elementwise affine on a (32, 256) input.

The layer lives in ``self.ln`` so candidates can match the state_dict keys (``ln.weight``, ``ln.bias``).
"""

import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x)


def get_inputs():
    return [torch.randn(32, 256)]


def get_init_inputs():
    return [256]
