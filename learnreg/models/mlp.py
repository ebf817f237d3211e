"""Multi-layer perceptrons."""

from __future__ import annotations

import difflib
import math

import torch
from torch import Tensor, nn

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

    def stacked_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The outputs of P copies of this network at stacked parameters on one shared
        batch: ``params`` maps every parameter name to a ``(P, *shape)`` tensor; returns
        ``(P, N, out_features)``. The same arithmetic as ``vmap`` over ``functional_call``
        (one batched matrix product per layer), without vmap's per-operation dispatch: a
        population of candidates trains through it (``core.population``)."""
        h = x.flatten(1)
        for name, layer in self.named_children():
            if isinstance(layer, nn.Linear):
                weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
                if h.dim() == 2:  # the shared batch: one product against every copy
                    h = h.expand(weight.shape[0], *h.shape)
                h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            elif not isinstance(layer, nn.Flatten):
                h = layer(h)  # activations are elementwise
        return h
