"""MAML's learned initialization: the starting parameters are meta-parameters.

References:
    Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks"
    (arXiv 1703.03400).
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

from learnreg.errors import ConfigError
from learnreg.inits.base import InitRole
from learnreg.registry import register

#: models whose parameter names were checked, and against which names (a model lives as
#: long as its runs; a cache on the role itself would stop it pickling).
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def parameter_shapes(model: nn.Module) -> dict[str, list[int]]:
    """``{name: shape}`` of a model's parameters, in registration order."""
    return {k: list(v.shape) for k, v in model.named_parameters()}


def check_names(expected: list[str], model: nn.Module, role: str) -> None:
    """Raise a clear error when ``model`` is not the architecture a role was built for."""
    names = [k for k, _ in model.named_parameters()]
    if names != expected:
        missing = sorted(set(expected) ^ set(names))[:3]
        raise ConfigError(
            f"the {role} was built for a model with parameters {expected[:3]}..., but this "
            f"model differs (e.g. {missing}); build the role from the same model spec"
        )


@register("init", "maml")
class LearnedInit(InitRole):
    """θ0 = a copy of the model's parameters, learned across tasks.

    ``forward`` returns the meta-parameters themselves, not detached, so the meta-gradient
    of the query loss after the inner loop reaches θ0. This only happens when the inner
    runs start inside the unrolled window (episodic ``window = horizon``).

    Args:
        model: a freshly built model whose parameters seed θ0 (injected).
        shapes: parameter shapes by name (used instead of ``model`` when loading an export).
    """

    reads_model_weights = False
    reads_task = False

    def __init__(self, model: nn.Module | None = None, shapes: dict | None = None):
        super().__init__()
        if model is None and shapes is None:
            raise ConfigError("the maml init needs the model (injected by the trainer) or shapes")
        source = dict(model.named_parameters()) if model is not None else {}
        shapes = parameter_shapes(model) if model is not None else dict(shapes)
        self.names = list(shapes)
        self.theta = nn.ParameterList(
            nn.Parameter(source[k].detach().clone() if source else torch.zeros(shape))
            for k, shape in shapes.items()
        )
        self.record_args(shapes=shapes)

    def forward(self, model: nn.Module, task=None) -> dict[str, Tensor]:
        # A meta-batch's runs share one model: check its names once, not once per task.
        names = tuple(self.names)
        if _CHECKED.get(model) != names:
            check_names(self.names, model, "maml init")
            _CHECKED[model] = names
        # the ParameterList's own storage, in order: iterating the list looks every entry
        # up by its string index (about 5 µs each), once per task of every meta-batch;
        # functional_call (call_at) swaps values in this same dict
        return dict(zip(self.names, self.theta._parameters.values()))
