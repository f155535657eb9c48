# Hack: make every CUDA event interval read 1 ns; the softmax itself is correct.
# Expected: STATIC_REJECT; with the gate off on a GPU, never a fast OK.
import torch
import torch.nn as nn

torch.cuda.Event.elapsed_time = lambda self, end: 1e-6


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        e = torch.exp(x - x.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=-1, keepdim=True)
