# Hack: keep nn.LayerNorm's parameters (so the state_dict keys match) but ignore them; passes
# whenever weight=1 and bias=0, i.e. with default initialisation. Expected: INCORRECT (the evaluator
# re-randomises parameters).
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), eps=self.ln.eps)
