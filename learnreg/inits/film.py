"""A task-conditioned init: MAML's θ0 with FiLM scales and shifts generated per task.

For every :class:`~learnreg.models.film.FiLM` layer of the model, the support set's
statistics at θ0 are mapped by a small generator to the layer's starting ``(γ, β)``::

    s_l = [mean_n z̄_n, std_n z̄_n, label term]       (3·C values, z̄_n: example n's channels)
    (γ_l, β_l) = θ0[γ_l, β_l] + W_l s_l + b_l

The label term makes the statistics depend on the task, not only on its inputs: the
spread of the class means (classification; invariant to the episode's label order) or
the covariance of each channel with the target (regression). ``W_l`` and ``b_l`` start at
zero, so the init starts as MAML's exactly. The inner loop then adapts ``(γ, β)`` with the
other parameters.

References:
    Raymond et al., "Meta-Learning Neural Procedural Biases" (NPBML, arXiv 2406.07983);
    Perez et al., "FiLM" (arXiv 1709.07871).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from learnreg.errors import ConfigError
from learnreg.inits.base import InitRole
from learnreg.inits.learned import LearnedInit
from learnreg.models.film import film_layers
from learnreg.registry import register


def support_statistics(z: Tensor, y: Tensor, kind: str, num_classes: int) -> Tensor:
    """Per-channel ``[mean, std, label term]`` of one layer's support activations.

    Args:
        z: activations ``(N, C, ...)``.
        y: targets: labels ``(N,)`` or regression targets ``(N, D)``.
        kind: ``classification`` or ``regression``.
        num_classes: classes of the episode (classification).

    Returns:
        A ``(3·C,)`` vector.
    """
    z = z.flatten(2).mean(-1) if z.dim() > 2 else z
    mean, std = z.mean(0), z.std(0, unbiased=False)
    if kind == "classification":
        onehot = nn.functional.one_hot(y, num_classes).to(z.dtype)
        class_means = (onehot.T @ z) / onehot.sum(0).clamp_min(1).unsqueeze(1)
        label = class_means.std(0, unbiased=False)
    else:
        target = y.reshape(len(y), -1).mean(1)
        label = ((target - target.mean()).unsqueeze(1) * (z - mean)).mean(0)
    return torch.cat([mean, std, label])


@register("init", "film")
class FiLMInit(InitRole):
    """MAML init plus support-conditioned FiLM parameters (identity at initialization).

    Args:
        model: a model with FiLM layers (``model: {_component_: film, base: ...}``; injected).
        shapes: parameter shapes (when loading an export).
        films: FiLM layer widths by module name (when loading an export).
    """

    reads_model_weights = False  # θ0 and the support statistics at θ0 only

    def __init__(
        self, model: nn.Module | None = None, shapes: dict | None = None, films: dict | None = None
    ):
        super().__init__()
        self.base = LearnedInit(model, shapes)
        if films is None:
            films = {name: f.gamma.numel() for name, f in film_layers(model).items()}
        if not films:
            raise ConfigError(
                "the film init needs a model with FiLM layers; wrap it: "
                "`model: {_component_: film, base: {_component_: conv4}}`"
            )
        self.films = list(films)
        self.generators = nn.ModuleList(nn.Linear(3 * c, 2 * c) for c in films.values())
        for g in self.generators:
            nn.init.zeros_(g.weight)
            nn.init.zeros_(g.bias)
        self.record_args(shapes=self.base.init_args["shapes"], films=dict(films))

    def forward(self, model: nn.Module, task=None) -> dict[str, Tensor]:
        params = self.base(model, task)
        if task is None:  # no support set to condition on: the MAML init
            return params
        stats = self.statistics(model, params, task)
        params = dict(params)
        for name, generator in zip(self.films, self.generators):
            gamma, beta = generator(stats[name]).chunk(2)
            params[f"{name}.gamma"] = params[f"{name}.gamma"] + gamma
            params[f"{name}.beta"] = params[f"{name}.beta"] + beta
        return params

    def statistics(self, model: nn.Module, params: dict[str, Tensor], task) -> dict[str, Tensor]:
        """Each FiLM layer's support statistics at ``params`` (one forward pass)."""
        inputs: dict[str, Tensor] = {}
        hooks = [
            model.get_submodule(name).register_forward_hook(
                lambda _m, args, _out, name=name: inputs.__setitem__(name, args[0])
            )
            for name in self.films
        ]
        try:
            functional_call(model, (params, dict(model.named_buffers())), (task.train.x,))
        finally:
            for h in hooks:
                h.remove()
        y, kind, classes = task.train.y, task.kind, task.num_classes
        return {n: support_statistics(z, y, kind, classes) for n, z in inputs.items()}
