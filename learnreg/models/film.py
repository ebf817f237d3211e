"""Feature-wise linear modulation: ``(1 + γ)·z + β`` per channel, the identity at γ = β = 0.

Two kinds:

* :class:`FiLM`: (γ, β) are ordinary model parameters: the inner loop adapts them like any
  other weight, and an init role decides their starting values per task
  (:class:`learnreg.inits.film.FiLMInit` generates them from the support set's
  statistics). The ``film`` model component inserts one after every activation of any
  sequential model, so the same backbone is available with and without FiLM (the
  ``npbml_gradprecond`` presets).
* :class:`AdaptiveFiLM` (NPBML): (γ, β) are computed at every forward pass by a linear
  generator from the channel means of a conditioning tensor (a block's input), so they
  follow whatever batch passes through; the generator is zero at first (the identity).

References:
    Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer"
    (arXiv 1709.07871); Raymond et al., "Meta-Learning Neural Procedural Biases"
    (NPBML, arXiv 2406.07983).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from learnreg.models.mlp import ACTIVATIONS
from learnreg.registry import register


class FiLM(nn.Module):
    """Per-channel scale and shift of dimension 1: ``(1 + γ)·z + β``.

    Args:
        num_features: channels (dimension 1 of the input).
    """

    def __init__(self, num_features: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(num_features))
        self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, z: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return (1 + self.gamma.view(shape)) * z + self.beta.view(shape)


class AdaptiveFiLM(nn.Module):
    """``(1 + γ)·z + β`` with ``(γ, β) = W·mean(x) + b`` per forward pass (NPBML's FiLM).

    ``mean(x)`` averages the conditioning tensor over every dimension but the channels
    (dim 1): batch and space. That equals NPBML's per-example generator averaged over the
    batch, since the generator is affine. ``W`` and ``b`` start at zero.

    Args:
        in_channels: channels of the conditioning tensor.
        out_channels: channels of the modulated tensor.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.generator = nn.Linear(in_channels, 2 * out_channels)
        nn.init.zeros_(self.generator.weight)
        nn.init.zeros_(self.generator.bias)

    def forward(self, z: Tensor, condition: Tensor) -> Tensor:
        dims = [0, *range(2, condition.dim())]
        gamma, beta = self.generator(condition.mean(dims)).chunk(2)
        shape = (1, -1) + (1,) * (z.dim() - 2)
        return (1 + gamma.view(shape)) * z + beta.view(shape)


def add_film(model: nn.Module, width_of=None) -> nn.Module:
    """Insert a :class:`FiLM` layer after every activation inside ``nn.Sequential``
    containers of ``model`` (in place), sized by the nearest preceding layer's width.

    Returns:
        ``model``, with FiLM layers named ``<container>.<index>``.
    """
    activations = tuple(ACTIVATIONS.values())
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        layers, width = [], None
        for layer in module:
            layers.append(layer)
            width = _width(layer) or width
            if isinstance(layer, activations) and width is not None:
                layers.append(FiLM(width))
        for name in list(module._modules):
            del module._modules[name]
        for i, layer in enumerate(layers):
            module.add_module(str(i), layer)
    return model


def _width(layer: nn.Module) -> int | None:
    for attr in ("out_features", "out_channels", "num_features"):
        if isinstance(getattr(layer, attr, None), int):
            return getattr(layer, attr)
    weight = getattr(layer, "weight", None)
    return weight.shape[0] if isinstance(weight, Tensor) and weight.dim() == 1 else None


@register("model", "film")
def film_model(input_shape, out_features: int, base: dict | str = "conv4") -> nn.Module:
    """Any registered model with a FiLM layer after every activation.

    Args:
        input_shape, out_features: injected.
        base: the model spec to modulate (``{_component_: conv4, hidden: 32}``).
    """
    from learnreg import components

    model = components.instantiate(
        "model", base, input_shape=input_shape, out_features=out_features
    )
    return add_film(model)


def film_layers(model: nn.Module) -> dict[str, FiLM]:
    """The model's FiLM layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FiLM)}
