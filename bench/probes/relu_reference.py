# Probe candidate: the reference submitted as a candidate (torch.relu). Expected: OK, speedup ~1.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)
