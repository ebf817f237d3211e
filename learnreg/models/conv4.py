"""The 4-conv few-shot backbone, with batch normalization that keeps no running statistics.

Each block is ``conv3x3 → BatchStatNorm → ReLU → max-pool 2``; the head is one linear
layer. Normalization always uses the statistics of the current batch (the support or
query set), as MAML's reference code does in both phases, so the model has no buffers
and its forward pass is a pure function of its parameters: it can be vmapped over a
meta-batch and differentiated twice.

References:
    Vinyals et al., "Matching Networks for One Shot Learning" (arXiv 1606.04080).
    Finn et al., "Model-Agnostic Meta-Learning" (arXiv 1703.03400).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from learnreg.models.cnn import _as_image, _Unflatten
from learnreg.registry import register


class BatchStatNorm(nn.Module):
    """Batch normalization over every dimension but the channels (dim 1), with a learned
    per-channel affine and no running statistics.

    Numerically ``nn.BatchNorm2d(track_running_stats=False)``, written with composite ops
    because the fused kernel's batching rule under ``torch.func.vmap`` gives wrong
    second-order gradients in torch 2.x (pytorch/functorch#534); see the tests.

    Args:
        num_features: channels.
        eps: added to the variance.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, z: Tensor) -> Tensor:
        dims = [0, *range(2, z.dim())]
        mean = z.mean(dims, keepdim=True)
        var = z.var(dims, keepdim=True, unbiased=False)
        shape = (1, -1) + (1,) * (z.dim() - 2)
        normalized = (z - mean) * torch.rsqrt(var + self.eps)
        return normalized * self.weight.view(shape) + self.bias.view(shape)


@register("model", "conv4")
class Conv4(nn.Sequential):
    """Four ``conv3x3 → norm → ReLU → pool`` blocks and a linear head.

    A block pools only while its input is at least 2x2, so small images (8x8 digits)
    keep a 1x1 map instead of vanishing.

    Args:
        input_shape: (C, H, W) (injected).
        out_features: classes per episode (injected).
        hidden: channels of every block (32 for mini-ImageNet in MAML, 64 for Omniglot).
        blocks: number of blocks.
    """

    def __init__(self, input_shape, out_features: int, hidden: int = 32, blocks: int = 4):
        c, h, w = _as_image(input_shape)
        layers: list[nn.Module] = [_Unflatten((c, h, w))]
        for _ in range(blocks):
            block = [nn.Conv2d(c, hidden, 3, padding=1), BatchStatNorm(hidden), nn.ReLU()]
            if min(h, w) >= 2:
                block.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            layers.append(nn.Sequential(*block))
            c = hidden
        layers += [nn.Flatten(), nn.Linear(hidden * h * w, out_features)]
        super().__init__(*layers)
