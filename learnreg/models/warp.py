"""NPBML's base networks: WarpGrad-style warp layers and per-forward FiLM in the last blocks.

A block of the last ``adaptive_blocks`` blocks is::

    z = conv(x)                        # adapted in the inner loop
    z = warp(z)                        # 3x3 conv (identity at first) → norm → FiLM(z)
    z = film(z, x)                     # (γ, β) from the block input's channel means
    out = pool(relu(z))

The warp layer's convolution, normalization and FiLM generator, and the block's FiLM
generator, are meta-parameters only: the models name the parameters the inner loop
adapts (``adapt``, shell-style patterns; by default the adaptive blocks' ``conv`` and
the head), and :func:`learnreg.core.inner.inner_step` holds every other parameter fixed.
Warping the forward pass of the task-adapted layers preconditions their gradients
(WarpGrad), which is how NPBML meta-learns its optimizer.

The warp layer owns the block's normalization (it sits between the adapted convolution
and the ReLU), so with the identity kernel and zero FiLM generators the network computes
exactly its backbone (``conv4`` or ``mlp``).

References:
    Raymond et al., "Meta-Learning Neural Procedural Biases" (NPBML, arXiv 2406.07983);
    Flennerhag et al., "Meta-Learning with Warped Gradient Descent" (arXiv 1909.00025);
    Perez et al., "FiLM" (arXiv 1709.07871).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from fnmatch import fnmatchcase

from torch import Tensor, nn

from learnreg.errors import ConfigError
from learnreg.models.cnn import _as_image, _Unflatten
from learnreg.models.conv4 import BatchStatNorm
from learnreg.models.film import AdaptiveFiLM
from learnreg.models.mlp import activation as make_activation
from learnreg.registry import register


class WarpLayer(nn.Module):
    """A meta-learned layer in the forward pass: square map (identity at first), optional
    batch-statistics norm, and a FiLM generated from the layer's input.

    Args:
        channels: width of the layer (it maps ``channels`` to ``channels``).
        spatial: a 3x3 convolution (images) rather than a linear map (vectors).
        norm: normalize with batch statistics after the map.
        film: modulate the output with an :class:`AdaptiveFiLM` of the input.
    """

    def __init__(self, channels: int, spatial: bool, norm: bool, film: bool = True):
        super().__init__()
        if spatial:
            self.map = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            nn.init.dirac_(self.map.weight)
        else:
            self.map = nn.Linear(channels, channels, bias=False)
            nn.init.eye_(self.map.weight)
        self.norm = BatchStatNorm(channels) if norm else None
        self.film = AdaptiveFiLM(channels, channels) if film else None

    def forward(self, x: Tensor) -> Tensor:
        z = self.map(x)
        if self.norm is not None:
            z = self.norm(z)
        return z if self.film is None else self.film(z, x)


class AdaptiveBlock(nn.Module):
    """``pool(act(film(warp(conv(x)), x)))``: an adapted layer inside meta-learned ones.

    Args:
        layer: the adapted map (a convolution or a linear layer), named ``conv``.
        warp: the :class:`WarpLayer` after it.
        film: FiLM the warped output from the block input's channel means.
        act: the activation.
        pool: down-sampling after the activation (or None).
    """

    def __init__(self, layer: nn.Module, warp: WarpLayer, film: bool, act: nn.Module, pool=None):
        super().__init__()
        width = layer.weight.shape[0]
        self.conv, self.warp = layer, warp
        self.film = AdaptiveFiLM(layer.weight.shape[1], width) if film else None
        self.act, self.pool = act, pool

    def forward(self, x: Tensor) -> Tensor:
        z = self.warp(self.conv(x))
        if self.film is not None:
            z = self.film(z, x)
        z = self.act(z)
        return z if self.pool is None else self.pool(z)


def _adapt_patterns(adapt, blocks: int, adaptive: int) -> tuple[str, ...]:
    if adapt is not None:
        return tuple(adapt)
    return tuple(f"block{i}.conv.*" for i in range(blocks - adaptive + 1, blocks + 1)) + ("head.*",)


@register("model", "npbml_conv4")
class NPBMLConv4(nn.Sequential):
    """The 4-conv backbone with warp layers and FiLM in its last blocks (NPBML).

    Children: ``input``, ``block1`` … ``block4``, ``flatten``, ``head``. The first
    blocks are ``conv → norm → relu → pool`` (as :class:`~learnreg.models.conv4.Conv4`),
    the last ``adaptive_blocks`` are :class:`AdaptiveBlock`.

    Args:
        input_shape, out_features: injected.
        hidden: channels of every block.
        blocks: number of blocks.
        adaptive_blocks: how many of the last blocks get warp layers and FiLM (2 in NPBML).
        film: use FiLM (False: warp layers without FiLM, an ablation rung).
        adapt: parameter-name patterns the inner loop adapts (default: the adaptive
            blocks' ``conv`` and the ``head``); ``["*"]`` adapts everything.
    """

    def __init__(
        self,
        input_shape,
        out_features: int,
        hidden: int = 32,
        blocks: int = 4,
        adaptive_blocks: int = 2,
        film: bool = True,
        adapt: list[str] | None = None,
    ):
        c, h, w = _as_image(input_shape)
        layers: OrderedDict[str, nn.Module] = OrderedDict(input=_Unflatten((c, h, w)))
        for i in range(1, blocks + 1):
            conv = nn.Conv2d(c, hidden, 3, padding=1)
            pool = nn.MaxPool2d(2) if min(h, w) >= 2 else None
            if pool is not None:
                h, w = h // 2, w // 2
            if i > blocks - adaptive_blocks:
                warp = WarpLayer(hidden, spatial=True, norm=True, film=film)
                layers[f"block{i}"] = AdaptiveBlock(conv, warp, film, nn.ReLU(), pool)
            else:
                block = [conv, BatchStatNorm(hidden), nn.ReLU()] + ([pool] if pool else [])
                layers[f"block{i}"] = nn.Sequential(*block)
            c = hidden
        layers["flatten"] = nn.Flatten()
        layers["head"] = nn.Linear(hidden * h * w, out_features)
        super().__init__(layers)
        self.adapt_patterns = _adapt_patterns(adapt, blocks, adaptive_blocks)
        check_patterns(self, self.adapt_patterns)


@register("model", "npbml_mlp")
class NPBMLMLP(nn.Sequential):
    """An MLP with warp layers and FiLM after its last hidden layers (NPBML on vectors).

    The warp layer is a linear map initialized to the identity, without normalization
    (the backbone MLP has none), followed by FiLM.

    Args:
        input_shape, out_features: injected.
        hidden: hidden widths.
        activation: hidden activation.
        adaptive_blocks: how many of the last hidden layers get warp layers and FiLM.
        film: use FiLM.
        adapt: parameter-name patterns the inner loop adapts (default: the adaptive
            blocks' ``conv`` (their linear layer) and the ``head``).
    """

    def __init__(
        self,
        input_shape,
        out_features: int,
        hidden: list[int] | tuple[int, ...] = (40, 40),
        activation: str = "relu",
        adaptive_blocks: int = 2,
        film: bool = True,
        adapt: list[str] | None = None,
    ):
        width = math.prod(input_shape)
        layers: OrderedDict[str, nn.Module] = OrderedDict(input=nn.Flatten())
        for i, h in enumerate(hidden, start=1):
            linear = nn.Linear(width, h)
            if i > len(hidden) - adaptive_blocks:
                warp = WarpLayer(h, spatial=False, norm=False, film=film)
                layers[f"block{i}"] = AdaptiveBlock(linear, warp, film, make_activation(activation))
            else:
                layers[f"block{i}"] = nn.Sequential(linear, make_activation(activation))
            width = h
        layers["head"] = nn.Linear(width, out_features)
        super().__init__(layers)
        self.adapt_patterns = _adapt_patterns(adapt, len(hidden), adaptive_blocks)
        check_patterns(self, self.adapt_patterns)


@register("model", "adapt_only")
def adapt_only(input_shape, out_features: int, base: dict | str, adapt: list[str]) -> nn.Module:
    """Any registered model whose inner loop adapts only the parameters named by ``adapt``.

    The model is returned unchanged (same parameter names) with ``adapt_patterns`` set;
    :func:`learnreg.core.inner.inner_step` holds every other parameter fixed.

    Args:
        input_shape, out_features: injected.
        base: the model spec (``{_component_: conv4, hidden: 32}``).
        adapt: shell-style parameter-name patterns (``["4.*", "6.*"]``).
    """
    from learnreg import components

    model = components.instantiate(
        "model", base, input_shape=input_shape, out_features=out_features
    )
    check_patterns(model, adapt)
    model.adapt_patterns = tuple(adapt)
    return model


def check_patterns(model: nn.Module, adapt) -> None:
    """Raise a clear error when a pattern names no parameter of ``model``."""
    names = [k for k, _ in model.named_parameters()]
    for pattern in adapt:
        if not any(fnmatchcase(k, pattern) for k in names):
            raise ConfigError(
                f"model.adapt pattern {pattern!r} matches no parameter; the model's "
                f"parameters are {names[:6]}..."
            )


def adapted_names(model: nn.Module) -> list[str]:
    """The parameters the inner loop adapts (all when the model names none)."""
    from learnreg.core.inner import frozen_names

    frozen = frozen_names(model)
    return [k for k, _ in model.named_parameters() if k not in frozen]


__all__ = ["WarpLayer", "AdaptiveBlock", "NPBMLConv4", "NPBMLMLP", "adapt_only", "adapted_names"]
