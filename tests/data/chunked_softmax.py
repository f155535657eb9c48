"""Plain-PyTorch softmax over row chunks: a cheap parametric candidate for search tests."""

import torch
import torch.nn as nn

SEARCH_SPACE = {"BLOCK": [4, 8, 16, 32, 64], "num_warps": [1, 2, 4, 8]}


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        parts = [torch.softmax(x[i : i + BLOCK], dim=-1) for i in range(0, x.shape[0], BLOCK)]
        return torch.cat(parts) * (num_warps / num_warps)
