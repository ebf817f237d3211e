"""Multi-layer perceptrons."""

from __future__ import annotations

import difflib
import math

from torch import nn

from learnreg.errors import ConfigError
from learnreg.registry import register

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        close = difflib.get_close_matches(name, ACTIVATIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown activation {name!r}.{hint} Choose from {', '.join(ACTIVATIONS)}."
        )
    return ACTIVATIONS[name]()


@register("model", "mlp")
class MLP(nn.Sequential):
    """Fully connected network; inputs of any shape are flattened.

    Args:
        input_shape: shape of one example (injected from the task).
        out_features: output width (injected: classes, or targets for regression).
        hidden: hidden layer widths.
        activation: hidden activation name (relu, tanh, sigmoid, gelu, elu, leaky_relu, silu).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...] | list[int],
        out_features: int,
        hidden: tuple[int, ...] | list[int] = (100,),
        activation: str = "relu",
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), globals()["activation"](activation)]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
