"""A per-parameter MLP update rule in the style of Metz et al.'s small learned optimizers.

References:
    Metz et al., "Understanding and correcting pathologies in the training of learned
    optimizers", arXiv 1810.10180; "Practical tradeoffs between memory, compute, and
    performance in learned optimizers", arXiv 2203.11860.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from learnreg.optimizers.flat import FlatRule, segment_mean
from learnreg.registry import register


def sqrt0(x: Tensor) -> Tensor:
    """``√x`` whose gradient at ``x = 0`` is 0 rather than ∞. A coordinate whose gradient
    is exactly zero (a dead ReLU, a zero-initialized tensor) has ``v = 0``; with a plain
    ``sqrt`` the unroll's backward pass would multiply ∞ by 0 and poison the
    meta-gradient with NaN. The forward value is exact."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


@register("optimizer", "mlp")
class MLPRule(FlatRule):
    """Every coordinate's update from a small MLP over its own optimizer statistics.

    Features of coordinate i at step t (``v̂`` the bias-corrected second moment with the
    slowest decay, ``δ = √v̂ + eps``):

    * ``g/δ`` and ``m̂_β/δ`` for each momentum decay β: gradient and momenta at several
      timescales, Adam-normalized so they are O(1) and invariant to the loss scale;
    * ``½ log(v̂_fast/v̂_slow)``: the second moment at two decays (is the gradient
      growing or shrinking?);
    * ``p / rms(p)``: the parameter value relative to its tensor's RMS;
    * ``tanh(t/τ)`` for each timescale τ: training progress (the same for every
      coordinate, so it enters the first layer as a bias).

    The MLP (ReLU, ``hidden`` widths) outputs a direction ``d`` and a log-magnitude
    ``s``; the update is ``step_mult · (d + wᵀf) · exp(exp_mult · s)``, with a learned
    linear skip ``wᵀf`` from the features. With ``adam_init`` the skip starts at
    ``−m̂_β/δ`` for the momentum decay β = 0.9 and the last layer at zero: a fresh rule
    is exactly Adam with learning rate ``step_mult``, and meta-training learns a
    correction to it (without it, a fresh rule takes random steps).

    Args:
        hidden: hidden layer widths (two layers of 32, as in Metz et al.).
        momentum_decays: decays of the momentum accumulators.
        rms_decays: two second-moment decays (fast, slow); the slow one normalizes.
        timescales: τ of the training-progress features.
        step_mult: the update's scale (1e-3).
        exp_mult: scale of the log-magnitude output (1e-3).
        eps: added to ``√v̂``.
        adam_init: start as Adam (see above).
    """

    def __init__(
        self,
        hidden: tuple[int, ...] | list[int] = (32, 32),
        momentum_decays: tuple[float, ...] | list[float] = (0.5, 0.9, 0.99),
        rms_decays: tuple[float, float] | list[float] = (0.9, 0.999),
        timescales: tuple[float, ...] | list[float] = (10.0, 100.0, 1000.0, 10000.0),
        step_mult: float = 1e-3,
        exp_mult: float = 1e-3,
        eps: float = 1e-8,
        adam_init: bool = True,
    ):
        super().__init__()
        if len(rms_decays) != 2:
            raise ValueError(f"rms_decays must be (fast, slow), got {rms_decays}")
        self.step_mult, self.exp_mult, self.eps = step_mult, exp_mult, eps
        self.nominal_lr = float(step_mult)  # a fresh rule's Adam learning rate
        self.register_buffer("momentum_decays", torch.tensor(momentum_decays))
        self.register_buffer("rms_decays", torch.tensor(rms_decays))
        self.register_buffer("timescales", torch.tensor(timescales))
        self.num_features = len(momentum_decays) + 3
        widths = [self.num_features + len(timescales), *hidden]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(cin, cout), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 2))
        self.skip = nn.Parameter(torch.zeros(self.num_features))
        if adam_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)
            adam = min(range(len(momentum_decays)), key=lambda i: abs(momentum_decays[i] - 0.9))
            with torch.no_grad():
                self.skip[1 + adam] = -1.0

    def slots(self):
        return {"m": (len(self.momentum_decays),), "v": (2,)}

    def prepare(self, grad, param, sizes):
        rms = sqrt0(segment_mean(param * param, sizes))
        return {"param": param / (rms + self.eps)}

    def update(self, grad, param, slots, aux, step, where):
        dtype = grad.dtype
        t = step.to(dtype)
        beta_m = self.momentum_decays.to(dtype)[:, None]
        beta_v = self.rms_decays.to(dtype)[:, None]
        m = torch.lerp(grad, slots["m"], beta_m)  # β m + (1 − β) g, one row per decay
        v = torch.lerp(grad * grad, slots["v"], beta_v)
        v_hat = v / (1 - beta_v**t)
        inv_delta = 1.0 / (sqrt0(v_hat[1]) + self.eps)  # 1 / (√v̂ + eps), slow decay
        tiny = self.eps * self.eps
        features = torch.cat(
            [
                (grad * inv_delta)[None],
                m * ((1 / (1 - beta_m**t)) * inv_delta),  # m̂ / (√v̂ + eps)
                (0.5 * torch.log((v_hat[0] + tiny) / (v_hat[1] + tiny)))[None],
                aux["param"][None],
            ]
        )
        out = self._mlp(features, t, dtype)
        direction = out[0] + self.weights(self.skip, dtype) @ features
        update = self.step_mult * direction * torch.exp(self.exp_mult * out[1])
        return update, {"m": m, "v": v}

    def _mlp(self, features: Tensor, t: Tensor, dtype: torch.dtype) -> Tensor:
        """The MLP on ``features`` (one column per coordinate), its first layer split into
        per-coordinate features and the progress features (one bias for all)."""
        first, *rest = [layer for layer in self.net if isinstance(layer, nn.Linear)]
        weight = self.weights(first.weight, dtype)
        progress = torch.tanh(t / self.timescales.to(dtype))
        bias = self.weights(first.bias, dtype) + weight[:, self.num_features :] @ progress
        # relu_ in place: addmm's backward needs its inputs, not its output
        hidden = torch.addmm(bias[:, None], weight[:, : self.num_features], features).relu_()
        for i, layer in enumerate(rest):
            w, b = self.weights(layer.weight, dtype), self.weights(layer.bias, dtype)
            hidden = torch.addmm(b[:, None], w, hidden)
            if i < len(rest) - 1:
                hidden = hidden.relu_()
        return hidden
