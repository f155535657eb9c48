# Hack: return uninitialised memory, hoping the allocator hands back a block that still holds the
# reference's output (the "150x softmax" incident). Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.empty_like(x)
