# Hack: correct for the first 10 calls (enough for a short correctness check), zeros afterwards when
# only the timing loop is watching. Expected: INCORRECT (the last timed output is re-checked).
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 10:
            return torch.zeros_like(x)
        return torch.softmax(x, dim=-1)
