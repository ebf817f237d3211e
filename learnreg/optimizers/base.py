"""The optimizer role: a torchopt-style gradient transformation as an ``nn.Module``.

Contract (mirrors torchopt's ``GradientTransformation``):

* ``init(params) -> state``: a pytree of tensors;
* ``forward(grads, state, params, inplace=False) -> (updates, state)``: differentiable
  with respect to the module's own parameters (the meta-parameters) when ``inplace`` is
  False. ``updates`` are *added* to the parameters.

``as_transform()`` exposes the role as a ``torchopt.base.GradientTransformation`` for use
with torchopt's own machinery.
"""

from __future__ import annotations

from typing import Any

import torchopt
from torch import Tensor

from learnreg.core.bias import Bias

Params = dict[str, Tensor]


class OptimizerRole(Bias):
    role = "optimizer"

    def init(self, params: Params) -> Any:
        raise NotImplementedError

    def forward(
        self, grads: Params, state: Any, params: Params, inplace: bool = False
    ) -> tuple[Params, Any]:
        raise NotImplementedError

    def as_transform(self) -> torchopt.base.GradientTransformation:
        def update(updates, state, *, params=None, inplace=True):
            return self(updates, state, params, inplace=inplace)

        return torchopt.base.GradientTransformation(self.init, update)


class TorchoptOptimizer(OptimizerRole):
    """A fixed torchopt transformation (no meta-parameters) in the optimizer role."""

    def __init__(self, transform: torchopt.base.GradientTransformation):
        super().__init__()
        self.transform = transform

    def init(self, params: Params) -> Any:
        return self.transform.init(params)

    def forward(self, grads, state, params, inplace: bool = False):
        return self.transform.update(grads, state, params=params, inplace=inplace)
