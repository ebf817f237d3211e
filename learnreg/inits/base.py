"""The init role: ``init(model, task) -> dict[str, Tensor]`` of initial parameters."""

from __future__ import annotations

from torch import Tensor, nn

from learnreg.core.bias import Bias


class InitRole(Bias):
    """Contract: ``forward(model, task) -> {name: tensor}`` covering every parameter of
    ``model``, differentiable with respect to the role's own parameters."""

    role = "init"

    def forward(self, model: nn.Module, task=None) -> dict[str, Tensor]:
        raise NotImplementedError
