# Hack: compute once per input shape, then return the cached output for any input of that shape
# (a benchmark that reuses one input would never notice). Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.cache = {}

    def forward(self, x):
        key = tuple(x.shape)
        if key not in self.cache:
            self.cache[key] = torch.softmax(x, dim=-1)
        return self.cache[key].clone()
