"""One table of every learnreg ``torch.optim`` optimizer, with small working settings.

The conformance tests run every entry through the same checks (state-dict round trip,
schedulers, closures, parameter groups, ``zero_grad``, ``torch.compile``) and the
benchmarks time them; a new optimizer joins both by adding a row here. Each row also
lists every parameter-group option the optimizer accepts, with a value that must change
the step (so no option is accepted and ignored), apart from the base optimizers'
implementation switches, which choose a kernel and never a value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from learnreg.optim.learned import LearnedOptimizer
from learnreg.optim.sam import GAM, GSAM, SAM


@dataclass(frozen=True)
class Change:
    """One option's test: steps with the group options ``set`` must differ from steps
    with ``against`` (the other group options at their defaults).

    Attributes:
        set: group options of the changed run.
        against: group options of the reference run.
        every_group: set them in every group (options that must agree across groups).
    """

    set: dict
    against: dict = field(default_factory=dict)
    every_group: bool = False


#: ``torch.optim`` switches that choose an implementation (same values, other kernels).
SWITCHES = ("foreach", "differentiable", "fused", "capturable")


def _sgd_options(momentum: float) -> dict[str, Change]:
    with_momentum = {"momentum": 0.5} if momentum == 0 else {}
    return {
        "lr": Change({"lr": 0.01}),
        "momentum": Change({"momentum": 0.5 if momentum == 0 else 0.0}),
        "dampening": Change({"dampening": 0.5, **with_momentum}, with_momentum),
        "nesterov": Change({"nesterov": True, **with_momentum}, with_momentum),
        "weight_decay": Change({"weight_decay": 0.1}),
        "maximize": Change({"maximize": True}),
    }


def _learned_options() -> dict[str, Change]:
    return {"lr": Change({"lr": 0.5}), "weight_decay": Change({"weight_decay": 0.5})}


@dataclass(frozen=True)
class Entry:
    """How to build one optimizer.

    Attributes:
        name: the row's name.
        build: ``build(params, lr) -> optimizer`` (deterministic: fresh learned rules
            are seeded).
        passes: forward/backward passes per step (1: ``step()`` after one backward).
        lr_linear: whether the first step's displacement is proportional to ``lr``.
        options: every parameter-group option it accepts (apart from :data:`SWITCHES`),
            each with a change that must move the parameters differently.
    """

    name: str
    build: Callable[..., torch.optim.Optimizer]
    passes: int = 1
    lr_linear: bool = True
    options: dict[str, Change] = field(default_factory=dict)


def _seeded_rule(name: str, seed: int = 0):
    def build(params, lr):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return LearnedOptimizer(params, name, lr=lr)

    return build


CATALOG: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "sam",
            lambda params, lr: SAM(params, torch.optim.SGD, lr=lr, momentum=0.9),
            2,
            options={
                "rho": Change({"rho": 0.2}),
                "adaptive": Change({"adaptive": True}, every_group=True),
                "eps": Change({"eps": 1.0}, every_group=True),
                **_sgd_options(momentum=0.9),
            },
        ),
        Entry(
            "asam",
            lambda params, lr: SAM(params, torch.optim.Adam, rho=0.5, adaptive=True, lr=lr),
            2,
            lr_linear=False,  # Adam's first step is lr · sign-like, linear; its rho is not lr-tied
            options={  # SAM's eps is "sam_eps" here: Adam has an eps of its own
                "rho": Change({"rho": 2.0}),
                "adaptive": Change({"adaptive": False}, every_group=True),
                "sam_eps": Change({"sam_eps": 1.0}, every_group=True),
                "lr": Change({"lr": 0.01}),
                "betas": Change({"betas": (0.5, 0.9)}),
                "eps": Change({"eps": 1.0}),
                "weight_decay": Change({"weight_decay": 0.5}),
                "decoupled_weight_decay": Change(
                    {"decoupled_weight_decay": True, "weight_decay": 0.5}, {"weight_decay": 0.5}
                ),
                "amsgrad": Change({"amsgrad": True, "betas": (0.0, 0.5)}, {"betas": (0.0, 0.5)}),
                "maximize": Change({"maximize": True}),
            },
        ),
        Entry(
            "gsam",
            lambda params, lr: GSAM(
                params, torch.optim.SGD, rho_max=0.05, rho_min=0.01, alpha=0.2, lr=lr
            ),
            2,
            lr_linear=False,  # rho follows the learning rate
            options={
                "rho_max": Change({"rho_max": 0.5}),
                "rho_min": Change({"rho_min": 0.0, "lr_max": 0.1}, {"lr_max": 0.1}),
                "alpha": Change({"alpha": 0.9}),
                "adaptive": Change({"adaptive": True}, every_group=True),
                "eps": Change({"eps": 1.0}, every_group=True),
                "lr_max": Change({"lr_max": 0.5}),
                "lr_min": Change({"lr_min": 0.02, "lr_max": 0.1}, {"lr_max": 0.1}),
                **_sgd_options(momentum=0.0),
            },
        ),
        Entry(
            "gam",
            lambda params, lr: GAM(params, torch.optim.SGD, lr=lr),
            4,
            options={
                "rho": Change({"rho": 1.0}),
                "rho_prime": Change({"rho_prime": 0.5}),
                "alpha": Change({"alpha": 0.9}),
                "beta": Change({"beta": 0.9}),
                "gamma": Change({"gamma": 0.9}),
                "eps": Change({"eps": 1.0}, every_group=True),
                **_sgd_options(momentum=0.0),
            },
        ),
        Entry("learned-mlp", _seeded_rule("mlp"), options=_learned_options()),
        Entry("learned-lstm", _seeded_rule("lstm"), options=_learned_options()),
        Entry("learned-meta_sgd", _seeded_rule("meta_sgd"), options=_learned_options()),
    ]
}
