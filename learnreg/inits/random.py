"""The model's own random initialization (no meta-parameters)."""

from __future__ import annotations

from learnreg.inits.base import InitRole
from learnreg.registry import register


@register("init", "random")
class RandomInit(InitRole):
    """The freshly built model's parameters (PyTorch's default initializers), copied."""

    def forward(self, model, task=None):
        return {k: v.detach().clone() for k, v in model.named_parameters()}
