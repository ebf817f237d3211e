"""The coordinatewise LSTM optimizer of "Learning to learn by gradient descent by
gradient descent" (Andrychowicz et al., arXiv 1606.04474)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from learnreg.optimizers.flat import FlatRule
from learnreg.registry import register


def log_sign_preprocess(grad: Tensor, k: float) -> Tensor:
    """The paper's gradient preprocessing (Appendix A), two rows, one column per coordinate::

        (log|g| / k, sign g)   if |g| >= e^-k
        (-1,         e^k g)    otherwise

    Differentiable everywhere the paper's map is (the log never sees |g| < e^-k).
    """
    large = grad.abs() >= math.exp(-k)
    log_part = torch.where(large, torch.log(grad.abs().clamp_min(math.exp(-k))) / k, -1.0)
    sign_part = torch.where(large, torch.sign(grad), math.exp(k) * grad)
    return torch.stack([log_part, sign_part])


@register("optimizer", "lstm")
class LSTMRule(FlatRule):
    """L2L coordinatewise LSTM optimizer (Andrychowicz et al., 2016).

    A small LSTM, shared by every coordinate, maps each coordinate's (preprocessed)
    gradient and its own hidden state to the update of that coordinate.

    All coordinates of all tensors form one batch of the LSTM, so a step is one batched
    call per layer, whatever the number of tensors.

    Args:
        hidden: LSTM units per layer (20).
        layers: stacked LSTM layers (2).
        preprocess_k: k of the log-and-sign preprocessing (10 in the paper, 5 in its code).
        output_scale: the output's multiplier (0.1 in the paper's code).
    """

    chunk_size = 16384

    def __init__(
        self,
        hidden: int = 20,
        layers: int = 2,
        preprocess_k: float = 10.0,
        output_scale: float = 0.1,
    ):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.preprocess_k, self.output_scale = preprocess_k, output_scale
        self.nominal_lr = float(output_scale)
        self.cells = nn.ModuleList(
            nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden, 1)

    def slots(self):
        return {"h": (self.layers, self.hidden), "c": (self.layers, self.hidden)}

    def update(self, grad, param, slots, aux, step, where):
        dtype = grad.dtype
        x = log_sign_preprocess(grad, self.preprocess_k)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = self._cell(cell, x, slots["h"][i], slots["c"][i], dtype)
            hs.append(h)
            cs.append(c)
            x = h
        w, b = self.weights(self.head.weight, dtype), self.weights(self.head.bias, dtype)
        update = self.output_scale * torch.addmm(b[:, None], w, x)[0]
        return update, {"h": torch.stack(hs), "c": torch.stack(cs)}

    def _cell(self, cell: nn.LSTMCell, x, h, c, dtype):
        """One LSTM cell (PyTorch's gate order i, f, g, o), one column per coordinate."""
        bias = self.weights(cell.bias_ih, dtype) + self.weights(cell.bias_hh, dtype)
        gates = torch.addmm(bias[:, None], self.weights(cell.weight_ih, dtype), x)
        gates = gates.addmm_(self.weights(cell.weight_hh, dtype), h)
        i, f, g, o = gates.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
