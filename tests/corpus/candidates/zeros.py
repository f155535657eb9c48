# Hack: all zeros. Every softmax entry is ~1/N, so a loose atol (1e-2) would pass it. Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.zeros_like(x)
