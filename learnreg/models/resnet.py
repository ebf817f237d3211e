"""A small ResNet (He et al., 2016) for 32x32 or 28x28 images."""

from __future__ import annotations

from torch import nn

from learnreg.models.cnn import _as_image, _Unflatten
from learnreg.registry import register


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.skip(x))


@register("model", "resnet")
class ResNet(nn.Module):
    """ResNet with three stages of ``depth`` basic blocks (ResNet-20 is depth=3, width=16).

    Args:
        input_shape: (C, H, W) (injected).
        out_features: number of classes (injected).
        depth: blocks per stage.
        width: channels of the first stage (doubled at each later stage).
    """

    def __init__(self, input_shape, out_features: int, depth: int = 1, width: int = 16):
        super().__init__()
        c, h, w = _as_image(input_shape)
        layers: list[nn.Module] = [
            _Unflatten((c, h, w)),
            nn.Conv2d(c, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        cin = width
        for stage in range(3):
            cout = width * 2**stage
            for block in range(depth):
                layers.append(BasicBlock(cin, cout, 2 if (block == 0 and stage > 0) else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, out_features)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
