"""Convolutional networks: LeNet-5 style and AllCNN-C."""

from __future__ import annotations

from torch import nn

from learnreg.errors import ConfigError
from learnreg.models.mlp import activation as make_activation
from learnreg.registry import register


def _as_image(input_shape) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return tuple(input_shape)
    if len(input_shape) == 2:
        return (1, *input_shape)
    side = int(round(input_shape[0] ** 0.5))
    if side * side != input_shape[0]:
        raise ConfigError(
            f"a CNN needs image inputs (C, H, W); got flat features of shape {tuple(input_shape)}"
        )
    return (1, side, side)


class _Unflatten(nn.Module):
    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)


@register("model", "lenet5")
class LeNet5(nn.Sequential):
    """LeNet-5 style CNN: two 5x5 conv + max-pool blocks, then three linear layers.

    Args:
        input_shape: (C, H, W), (H, W) or flat square images (injected).
        out_features: number of classes (injected).
        channels: widths of the two conv layers.
        activation: activation name.
    """

    def __init__(
        self,
        input_shape,
        out_features: int,
        channels: tuple[int, int] | list[int] = (6, 16),
        activation: str = "relu",
    ):
        c, h, w = _as_image(input_shape)
        c1, c2 = channels
        size = lambda s: ((s - 4) // 2 - 4) // 2  # noqa: E731  (two conv5 + pool2)
        if size(h) < 1 or size(w) < 1:
            pad = 2
            size = lambda s: ((s + 2 * pad - 4) // 2 + 2 * pad - 4) // 2  # noqa: E731
        else:
            pad = 0
        super().__init__(
            _Unflatten((c, h, w)),
            nn.Conv2d(c, c1, 5, padding=pad),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=pad),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * size(h) * size(w), 120),
            make_activation(activation),
            nn.Linear(120, 84),
            make_activation(activation),
            nn.Linear(84, out_features),
        )


@register("model", "small_cnn")
class SmallCNN(nn.Sequential):
    """A small CNN (two 3x3 conv blocks + linear head) for fast CPU experiments.

    Args:
        input_shape: (C, H, W) or flat square images (injected).
        out_features: number of classes (injected).
        channels: conv widths.
        activation: activation name.
    """

    def __init__(
        self,
        input_shape,
        out_features: int,
        channels: tuple[int, int] | list[int] = (16, 32),
        activation: str = "relu",
    ):
        c, h, w = _as_image(input_shape)
        c1, c2 = channels
        super().__init__(
            _Unflatten((c, h, w)),
            nn.Conv2d(c, c1, 3, padding=1),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            make_activation(activation),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (h // 4) * (w // 4), out_features),
        )


@register("model", "allcnn_c")
class AllCNNC(nn.Sequential):
    """AllCNN-C (Springenberg et al., 2015): strided convolutions instead of pooling.

    Args:
        input_shape: (C, H, W) (injected).
        out_features: number of classes (injected).
        width: channels of the first two stages (96 in the paper; the third is 2x).
        batch_norm: add BatchNorm after each conv (common modern variant).
    """

    def __init__(self, input_shape, out_features: int, width: int = 96, batch_norm: bool = True):
        c, h, w = _as_image(input_shape)
        w2 = 2 * width
        spec = [
            (c, width, 3, 1),
            (width, width, 3, 1),
            (width, width, 3, 2),
            (width, w2, 3, 1),
            (w2, w2, 3, 1),
            (w2, w2, 3, 2),
            (w2, w2, 3, 1),
            (w2, w2, 1, 1),
        ]
        layers: list[nn.Module] = [_Unflatten((c, h, w))]
        for cin, cout, k, s in spec:
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
        layers += [nn.Conv2d(w2, out_features, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        super().__init__(*layers)
