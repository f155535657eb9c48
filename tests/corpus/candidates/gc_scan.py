# Hack: look through every live Python object for a tensor shaped like the output (hoping it is the
# reference's expected output) and return a copy. Expected: STATIC_REJECT; with the gate off,
# INCORRECT (expected outputs never exist in the candidate process).
import gc

import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj is not x and obj.shape == x.shape:
                return obj.detach().clone()
        return torch.zeros_like(x)
