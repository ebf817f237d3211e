"""Learned gradient preconditioners: Meta-SGD rates, Kronecker factors, WarpGrad-style warps.

One update rule, three structures for the learned matrix ``P`` in
``θ ← θ − SGD-momentum(P·∇θ)``, chosen per parameter tensor by ``mode``:

* ``diagonal`` (Meta-SGD): a learned learning rate per coordinate, ``u = α ⊙ g``,
  with ``α`` initialized to ``lr``. Used for every tensor in this mode, and for vectors
  (biases, norms, FiLM) in the others.
* ``kronecker`` (Meta-Curvature): one learned matrix per mode of the tensor, identity at
  initialization: ``u = lr · L G R`` for a linear weight ``G (out, in)``, and
  ``u = lr · G ×₁ M_out ×₂ M_in ×₃ M_filter`` for a convolution ``(out, in, k·k)``.
* ``warp`` (WarpGrad-style): for a convolution, a learned 3x3 convolution over the
  filter's spatial grid mixing input channels, initialized to the identity kernel, and
  an output-channel matrix; linear weights get the Kronecker factors. The warp's weights
  are meta-parameters only; the inner loop never adapts them.

At initialization ``P`` is the identity and the rule is plain SGD (with momentum and
Nesterov when set): the trajectories agree to rounding (``tests/test_precond.py``).

References:
    Li et al., "Meta-SGD" (arXiv 1707.09835); Park & Oliva, "Meta-Curvature"
    (arXiv 1902.03356); Flennerhag et al., "Meta-Learning with Warped Gradient Descent"
    (arXiv 1909.00025); Raymond et al., NPBML (arXiv 2406.07983).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchopt
from torch import Tensor, nn

from learnreg.errors import ConfigError
from learnreg.inits.learned import parameter_shapes
from learnreg.optimizers.base import OptimizerRole, Params
from learnreg.registry import register

Mode = Literal["diagonal", "kronecker", "warp"]


class Diagonal(nn.Module):
    """Meta-SGD: a learned rate per coordinate, ``u = α ⊙ g`` with ``α = lr`` at first."""

    def __init__(self, shape: list[int], lr: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.rates = nn.Parameter(torch.full(shape, float(lr), dtype=dtype))

    def forward(self, g: Tensor) -> Tensor:
        return self.rates * g


class Kronecker(nn.Module):
    """``lr · G ×₁ M₁ ×₂ M₂ …``: a learned matrix per tensor mode (out, in[, filter])."""

    def __init__(self, shape: list[int], lr: float, dtype: torch.dtype | None = None):
        super().__init__()
        self.shape, self.lr = list(shape), lr
        modes = shape[:2] + ([math.prod(shape[2:])] if len(shape) > 2 else [])
        self.factors = nn.ParameterList(nn.Parameter(torch.eye(n, dtype=dtype)) for n in modes)

    def forward(self, g: Tensor) -> Tensor:
        # one mode product at a time: a single many-operand einsum may form outer products
        if len(self.factors) == 2:
            return self.lr * (self.factors[0] @ g @ self.factors[1].T)
        out, inp, filt = self.factors
        u = torch.einsum("po,oik->pik", out, g.flatten(2))
        u = torch.einsum("qi,pik->pqk", inp, u)
        u = torch.einsum("rk,pqk->pqr", filt, u)
        return self.lr * u.reshape(g.shape)


class Warp(nn.Module):
    """``lr · M_out · warp(G)``: a 3x3 convolution over a conv gradient's filter grid
    (input channels as channels, one image per output channel), identity at first."""

    def __init__(self, shape: list[int], lr: float, dtype: torch.dtype | None = None):
        super().__init__()
        out_channels, in_channels = shape[:2]
        self.lr = lr
        kernel = torch.zeros(in_channels, in_channels, 3, 3, dtype=dtype)
        kernel[range(in_channels), range(in_channels), 1, 1] = 1.0
        self.kernel = nn.Parameter(kernel)
        self.out = nn.Parameter(torch.eye(out_channels, dtype=dtype))

    def forward(self, g: Tensor) -> Tensor:
        # im2col + matmul rather than conv2d: backends may run a 3x3 convolution as
        # Winograd, which is not exactly the identity at the identity kernel.
        patches = F.unfold(g, kernel_size=3, padding=1)  # (out, in·9, k·k)
        warped = torch.einsum("qc,ock->oqk", self.kernel.flatten(1), patches)
        return self.lr * torch.einsum("po,oqk->pqk", self.out, warped).reshape(g.shape)


def structure(shape: list[int], mode: Mode) -> type[nn.Module]:
    """The preconditioner class for a parameter of ``shape`` under ``mode``."""
    if mode == "diagonal" or len(shape) < 2:
        return Diagonal
    if mode == "warp" and len(shape) == 4:
        return Warp
    return Kronecker if len(shape) in (2, 4) else Diagonal


@register("optimizer", "preconditioned_sgd")
class PreconditionedSGD(OptimizerRole):
    """SGD with (Nesterov) momentum on learned-preconditioned gradients.

    ``mode: diagonal`` with ``momentum: 0`` is Meta-SGD; ``mode: warp`` with momentum 0.9
    and Nesterov is NPBML's preconditioned inner optimizer.

    Args:
        model: the base model (injected): one preconditioner per parameter tensor.
        shapes: parameter shapes by name (used instead of ``model`` when loading an export).
        lr: the learning rate (the initial Meta-SGD rate in ``diagonal`` structures).
        momentum: heavy-ball momentum applied to the preconditioned gradient.
        nesterov: Nesterov momentum.
        mode: ``diagonal``, ``kronecker`` or ``warp`` (see the module docstring).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        shapes: dict | None = None,
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        mode: Mode = "warp",
    ):
        super().__init__()
        if model is None and shapes is None:
            raise ConfigError("preconditioned_sgd needs the model (injected) or shapes")
        if nesterov and momentum <= 0:
            raise ConfigError("Nesterov momentum needs momentum > 0; set optimizer.momentum")
        shapes = parameter_shapes(model) if model is not None else dict(shapes)
        dtype = next(model.parameters()).dtype if model is not None else None
        self.names, self.lr, self.mode = list(shapes), lr, mode
        self.preconditioners = nn.ModuleList(
            structure(s, mode)(s, lr, dtype) for s in shapes.values()
        )
        self.transform = torchopt.sgd(1.0, momentum=momentum, nesterov=nesterov)
        self.record_args(shapes=shapes, lr=lr, momentum=momentum, nesterov=nesterov, mode=mode)

    def precondition(self, grads: Params) -> Params:
        """``P·g`` per tensor, with the learning rate folded in. ``grads`` may cover a
        subset of the model's parameters (a model that adapts only some of them)."""
        unknown = [k for k in grads if k not in self.names]
        if unknown or not grads:
            raise ConfigError(
                f"preconditioned_sgd was built for parameters {self.names[:3]}..., "
                f"got {list(grads)[:3]}...; build it from the same model spec"
            )
        by_name = dict(zip(self.names, self.preconditioners))
        return {k: by_name[k](g) for k, g in grads.items()}

    def init(self, params: Params) -> Any:
        return self.transform.init(params)

    def forward(self, grads: Params, state: Any, params: Params, inplace: bool = False):
        return self.transform.update(
            self.precondition(grads), state, params=params, inplace=inplace
        )
