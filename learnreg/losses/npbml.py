"""NPBML's learned loss: cross-entropy plus an inductive and a transductive learned term.

``M = CE(support) + mean_support I_φ([f(x), onehot(y), CE_i]) + mean_query T_ψ([f(x_q), ŷ_q, CE_q])``

* The inductive network ``I_φ`` sees, per labelled example, its logits, its one-hot
  target and its own cross-entropy (``2C + 1`` inputs).
* The transductive network ``T_ψ`` sees, per unlabelled query example, its logits, soft
  pseudo-targets ``ŷ_q`` (negative squared distances to the class prototypes, here the
  mean support logits of each class) and the cross-entropy between its prediction and
  ``softmax(ŷ_q)``.

Unlabelled examples are the rows whose label is ``ignore_index`` (-100, PyTorch's
convention): a ``few_shot`` task with ``transductive: true`` appends the query inputs to
the support set with that label, so the inner loop sees them (and batch statistics cover
them, as in NPBML's code). Masks are multiplications, not boolean indexing, so the loss is
vmappable over a meta-batch.

Both networks are ``2C+1 → 2C+1 → 2C+1 → 1`` MLPs with ReLU and a smooth leaky ReLU
output (AdaLFL's). Their output layers start at zero, so at initialization the learned
terms are constants and the loss's gradient is cross-entropy's exactly.

For regression (``kind: regression``) the inductive network sees ``[ŷ, y, (ŷ − y)²]``
per output; there is no transductive term.

References:
    Raymond et al., "Meta-Learning Neural Procedural Biases" (NPBML, arXiv 2406.07983);
    Raymond et al., "Meta-Learning Adaptive Loss Functions" (arXiv 2301.13247).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnreg.losses.base import LossRole, check_pair
from learnreg.losses.neural import SmoothLeakyReLU
from learnreg.registry import register

IGNORE_INDEX = -100


def _network(width: int, layers: int) -> nn.Sequential:
    """``layers`` linear layers of ``width`` (ReLU between), a scalar smooth-leaky output."""
    modules: list[nn.Module] = []
    for _ in range(layers - 1):
        modules += [nn.Linear(width, width), nn.ReLU()]
    modules += [nn.Linear(width, 1), SmoothLeakyReLU(0.25, 5.0)]
    net = nn.Sequential(*modules)
    nn.init.zeros_(net[-2].weight)
    nn.init.zeros_(net[-2].bias)
    return net


def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``Σ w v / max(Σ w, 1)``: the mean over the rows with weight 1."""
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


@register("loss", "npbml")
class NPBMLLoss(LossRole):
    """Cross-entropy plus NPBML's inductive and transductive learned terms.

    Args:
        kind: ``classification`` or ``regression`` (injected).
        num_classes: classes, or regression outputs (injected).
        layers: linear layers of each network (3 in NPBML).
        transductive: include the transductive term on unlabelled query rows.
    """

    def __init__(
        self,
        kind: Literal["classification", "regression"] = "classification",
        num_classes: int = 5,
        layers: int = 3,
        transductive: bool = True,
    ):
        super().__init__()
        self.kind, self.num_classes = kind, num_classes
        width = 2 * num_classes + 1 if kind == "classification" else 3
        self.inductive = _network(width, layers)
        use_transductive = transductive and kind == "classification"
        self.transductive = _network(width, layers) if use_transductive else None

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.kind == "regression":
            check_pair(pred, target, "regression")
            sq = (pred - target) ** 2
            features = torch.stack([pred, target, sq], -1)  # (N, D, 3)
            return sq.mean() + self.inductive(features).mean()
        check_pair(pred, target, "classification", self.num_classes)
        labelled = (target != IGNORE_INDEX).to(pred.dtype)  # (N,)
        safe = target.clamp_min(0)
        onehot = torch.zeros_like(pred).scatter(-1, safe.unsqueeze(-1), 1.0) * labelled[:, None]
        log_probs = pred.log_softmax(-1)
        ce = -(log_probs * onehot).sum(-1)  # (N,), 0 on unlabelled rows
        inductive = self.inductive(torch.cat([pred, onehot, ce[:, None]], -1)).squeeze(-1)
        loss = masked_mean(ce, labelled) + masked_mean(inductive, labelled)
        if self.transductive is not None:
            loss = loss + self.transductive_term(pred, onehot, log_probs, 1 - labelled)
        return loss

    def transductive_term(
        self, pred: Tensor, onehot: Tensor, log_probs: Tensor, unlabelled: Tensor
    ) -> Tensor:
        """The transductive network's mean over unlabelled rows (0 when there are none)."""
        counts = onehot.sum(0).clamp_min(1.0)  # (C,)
        prototypes = (onehot.T @ pred) / counts[:, None]  # (C, C): mean logits per class
        pseudo = -((pred[:, None, :] - prototypes[None]) ** 2).sum(-1)  # (N, C)
        soft_ce = -(F.softmax(pseudo, -1) * log_probs).sum(-1)
        features = torch.cat([pred, pseudo, soft_ce[:, None]], -1)
        return masked_mean(self.transductive(features).squeeze(-1), unlabelled)
