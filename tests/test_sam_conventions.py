"""SAM's two closure conventions (learnreg's: ``step`` makes both passes; davda54/sam's:
the caller's ``backward()`` is the first pass) take the same step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnreg.optim import GSAM, SAM


@pytest.mark.parametrize(
    "cls,kwargs", [(SAM, {"rho": 0.1}), (GSAM, {"rho_max": 0.1, "alpha": 0.3})]
)
def test_first_pass_done_takes_the_same_step_with_one_closure_call(cls, kwargs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    other = copy.deepcopy(net)
    ours = cls(net.parameters(), torch.optim.SGD, model=net, lr=0.1, momentum=0.9, **kwargs)
    theirs = cls(other.parameters(), torch.optim.SGD, model=other, lr=0.1, momentum=0.9, **kwargs)
    calls = {"ours": 0, "theirs": 0}
    start = copy.deepcopy(net.state_dict())

    def closure():
        calls["ours"] += 1
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    def second_pass():
        calls["theirs"] += 1
        F.cross_entropy(other(x), y).backward()

    for _ in range(3):
        ours.zero_grad()
        ours.step(closure)
        theirs.zero_grad()
        F.cross_entropy(other(x), y).backward()
        assert theirs.step(second_pass, first_pass_done=True) is None
    assert calls == {"ours": 6, "theirs": 3}
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert not torch.equal(start["0.weight"], net.state_dict()["0.weight"])  # it did step
