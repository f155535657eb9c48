# Hack: the constant 1/N, the mean value of a softmax row; close to every entry in absolute terms.
# Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.full_like(x, 1.0 / x.shape[-1])
