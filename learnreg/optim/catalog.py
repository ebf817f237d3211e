"""One table of every learnreg ``torch.optim`` optimizer, with small working settings.

The conformance tests run every entry through the same checks (state-dict round trip,
schedulers, closures, parameter groups, ``zero_grad``, ``torch.compile``) and the
benchmarks time them; a new optimizer joins both by adding a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from learnreg.optim.learned import LearnedOptimizer
from learnreg.optim.sam import GAM, GSAM, SAM


@dataclass(frozen=True)
class Entry:
    """How to build one optimizer.

    Attributes:
        name: the row's name.
        build: ``build(params, lr) -> optimizer`` (deterministic: fresh learned rules
            are seeded).
        passes: forward/backward passes per step (1: ``step()`` after one backward).
        lr_linear: whether the first step's displacement is proportional to ``lr``.
    """

    name: str
    build: Callable[..., torch.optim.Optimizer]
    passes: int = 1
    lr_linear: bool = True


def _seeded_rule(name: str, seed: int = 0):
    def build(params, lr):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return LearnedOptimizer(params, name, lr=lr)

    return build


CATALOG: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry("sam", lambda params, lr: SAM(params, torch.optim.SGD, lr=lr, momentum=0.9), 2),
        Entry(
            "asam",
            lambda params, lr: SAM(params, torch.optim.Adam, rho=0.5, adaptive=True, lr=lr),
            2,
            lr_linear=False,  # Adam's first step is lr · sign-like, linear; its rho is not lr-tied
        ),
        Entry(
            "gsam",
            lambda params, lr: GSAM(
                params, torch.optim.SGD, rho_max=0.05, rho_min=0.01, alpha=0.2, lr=lr
            ),
            2,
            lr_linear=False,  # rho follows the learning rate
        ),
        Entry("gam", lambda params, lr: GAM(params, torch.optim.SGD, lr=lr), 4),
        Entry("learned-mlp", _seeded_rule("mlp")),
        Entry("learned-lstm", _seeded_rule("lstm")),
        Entry("learned-meta_sgd", _seeded_rule("meta_sgd")),
    ]
}
