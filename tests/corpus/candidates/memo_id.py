# Hack: cache outputs by id(x). The cache does not keep x alive, so a fresh input that CPython
# places at a freed input's address (or a pool tensor refilled in place) gets a stale answer.
# Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.cache = {}

    def forward(self, x):
        key = id(x)
        if key not in self.cache:
            self.cache[key] = torch.softmax(x, dim=-1)
        return self.cache[key].clone()
