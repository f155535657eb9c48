# Hack: cache outputs under a cheap content fingerprint (shape + the sign of x[0, 0]) instead of the
# full content. The fingerprint has two values per shape, so among three or more distinct inputs of
# one shape at least two get another input's output. Expected: INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.cache = {}

    def forward(self, x):
        key = (tuple(x.shape), x[0, 0].item() > 0)
        if key not in self.cache:
            self.cache[key] = torch.softmax(x, dim=-1)
        return self.cache[key].clone()
