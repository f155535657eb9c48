# Hack: return an empty buffer at once and fill it with the right answer 50 ms later from a thread,
# so the timed call does no work. Expected: STATIC_REJECT; with the gate off, INCORRECT (outputs are
# checked when the call returns).
import threading
import time

import torch
import torch.nn as nn


def _fill_later(out, x):
    time.sleep(0.05)
    out.copy_(torch.softmax(x, dim=-1))


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        out = torch.empty_like(x)
        threading.Thread(target=_fill_later, args=(out, x.clone()), daemon=True).start()
        return out
