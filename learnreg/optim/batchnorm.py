"""Keep BatchNorm running statistics still during the extra passes of SAM-like methods.

SAM, GSAM and GAM run several forward passes per step. In training mode every pass
would move the running mean and variance, so they would advance 2 or 4 times per step,
partly at perturbed weights. Run the extra passes inside :func:`frozen_bn_stats` and
the statistics move once per step, with the pass at the unperturbed weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def frozen_bn_stats(model: nn.Module | None) -> Iterator[None]:
    """Inside the block, forward passes in training mode leave every BatchNorm layer's
    running statistics (mean, variance, batch count) as they were.

    Normalization still uses the batch statistics, so gradients are unchanged; only the
    running buffers are restored on exit. ``model=None`` does nothing.

    Args:
        model: the network (any ``nn.Module``), or None.

    Example::

        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        with frozen_bn_stats(model):
            loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
    """
    layers = (
        [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        if model is not None
        else []
    )
    saved = [[b.clone() for b in _stats(m)] for m in layers]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, copies in zip(layers, saved):
                for buffer, copy in zip(_stats(m), copies):
                    buffer.copy_(copy)


def _stats(layer: _BatchNorm) -> list[torch.Tensor]:
    return [
        b
        for b in (layer.running_mean, layer.running_var, layer.num_batches_tracked)
        if b is not None
    ]
