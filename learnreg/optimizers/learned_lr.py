"""The learned-learning-rate control: a fixed optimizer whose step size is meta-learned.

A learned loss can win simply by scaling the task loss's gradient up, which is what a
larger learning rate does. This role has exactly one meta-parameter, a positive scalar
``s = exp(log_scale)`` multiplying a fixed optimizer's updates, so meta-training it with
the same estimator and budget as a learned loss answers "would just learning the step
size have done as well?". With SGD it is cross-entropy times a learned positive scalar;
unlike a scaled loss it also moves Adam, whose updates ignore the loss's scale.

References:
    Baydin et al., "Online Learning Rate Adaptation with Hypergradient Descent"
    (arXiv 1703.04782): a learned scalar step size by a one-step meta-gradient.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from learnreg import components
from learnreg.errors import ConfigError
from learnreg.optimizers.base import OptimizerRole
from learnreg.registry import register


@register("optimizer", "learned_lr")
class LearnedLR(OptimizerRole):
    """A fixed optimizer times a meta-learned positive scalar: ``Δθ = s · U(g)``.

    Args:
        base: the fixed optimizer's spec (``{_component_: sgd, lr: 0.01}``); its own
            learning rate is the starting point, ``s`` starts at ``scale``.
        scale: the initial multiplier (``s = exp(log_scale)`` stays positive).
    """

    def __init__(self, base: dict | str = "sgd", scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"learned_lr: scale must be positive, got {scale!r}")
        spec = components.normalize_component(base, "learned_lr.base")
        self.base = components.instantiate("optimizer", spec)
        if self.base.is_learned:
            raise ConfigError(
                f"learned_lr: base optimizer {spec[components.COMPONENT]!r} has meta-parameters "
                "of its own; give a fixed optimizer such as sgd or adam"
            )
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    @property
    def scale(self) -> float:
        """The current multiplier ``s``."""
        return math.exp(self.log_scale.item())

    @property
    def lr(self) -> float:
        """The effective learning rate: the base optimizer's times ``s``."""
        return getattr(self.base, "lr", 1.0) * self.scale

    def init(self, params):
        return self.base.init(params)

    def forward(self, grads, state, params, inplace: bool = False):
        updates, state = self.base(grads, state, params)
        updates = {k: self.log_scale.exp().to(u.dtype) * u for k, u in updates.items()}
        return updates, state
