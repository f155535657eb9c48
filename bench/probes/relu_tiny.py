"""Probe task: ReLU of a (4, 1024) float32 tensor, 4096 elements (a launch-bound kernel).

Used by ``bench/gpu_preflight.py`` (timing sanity of a tiny kernel, IPC and compile probes).
"""

import torch
import torch.nn as nn


class Model(nn.Module):
    """ReLU."""

    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


SHAPES = [lambda: [torch.randn(3, 77)]]


def get_inputs():
    return [torch.randn(4, 1024)]


def get_init_inputs():
    return []
