# Hack: zero the input in place, then return the softmax of the zeroed input. An evaluator that
# computes the reference after the candidate, from the same tensor, would see a match.
# Expected: INPUT_MUTATED or INCORRECT.
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x.zero_()
        return torch.softmax(x, dim=-1)
