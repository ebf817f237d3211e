"""Control runs: the same meta-training machinery and budget as a run, learning only what
a control needs (``baseline.controls: [learned_lr]``: a meta-learned step size on the
baseline's loss and optimizer), so a learned bias is also compared with "just learn the
step size". The runner meta-trains each control in ``RUN/controls/<name>/``.
"""

from __future__ import annotations

import numpy as np
from cmaes import CMA

from learnreg.errors import ConfigError
from learnreg.experiment import Experiment, baseline_optimizer


def control_config(cfg: dict, exp: Experiment, name: str = "learned_lr") -> dict:
    """The config of a control run: the baseline's loss and init with a meta-learned
    step size on the baseline's optimizer, trained by the run's own estimator for the
    same meta-steps and meta-tested the same way (online adaptation included).

    A search (an estimator without an outer optimizer: TaylorGLO, EvoMAL, GP-LFL) has no
    meta-gradient to train a step size with. Its control is the same search machinery
    with the same budget: CMA-ES over the step size's logarithm, from the preset's lr,
    with the search's population, generations, fitness runs and objective (no filters
    and no local search: they belong to the searched loss), so both sides pay for the
    same number of partial trainings.
    """
    control = {k: v for k, v in cfg.items()}
    control["method"] = f"{cfg['method']}-{name}-control"
    control["loss"] = cfg["baseline"]["loss"]
    control["optimizer"] = {
        "_component_": "learned_lr",
        "base": baseline_optimizer(cfg, exp.trainer.biases),
    }
    control["init"] = {"_component_": "random"}
    if not exp.trainer.estimator.needs_outer:
        control["estimator"] = step_size_search(cfg["estimator"], exp)
    control["meta_test"] = {**cfg["meta_test"], "baseline": False}
    control["baseline"] = {
        **cfg["baseline"],
        "tune": {**cfg["baseline"]["tune"], "enabled": False},
        "controls": [],
    }
    control["logger"] = {**cfg["logger"], "backends": []}
    return control


def step_size_search(search: dict, exp: Experiment) -> dict:
    """A search's spec turned into CMA-ES over the optimizer role's one meta-parameter
    (``log_scale``), keeping the population (the searcher's actual one, so a GP population
    of 25 becomes 25 CMA-ES candidates), the evaluator, the fitness runs and the
    generations (``meta_steps``, unchanged in the control's config)."""
    spec = {
        k: v for k, v in search.items() if k not in ("searcher", "filters", "local_search", "role")
    }
    population = search_population(exp)
    spec["searcher"] = {
        "_component_": "cmaes",
        "population": max(2, population),
        "sigma": 1.0,  # one e-fold of the step size
        "start": "current",  # log_scale 0: the preset's lr
    }
    spec["role"] = "optimizer"
    return spec


def search_population(exp: Experiment) -> int:
    """Candidates per generation of the run's search (when none was given, the default
    the ``cmaes`` package picks for the searched role's ``d`` meta-parameters)."""
    estimator = exp.trainer.estimator
    searcher = getattr(estimator, "searcher", None)
    if searcher is None:
        raise ConfigError(
            f"baseline.controls: the {type(estimator).__name__} estimator has neither an outer "
            "optimizer nor a searcher to learn a step size with; remove `learned_lr` from "
            "baseline.controls"
        )
    population = getattr(searcher, "population", None) or getattr(searcher, "requested", None)
    if population:
        return int(population)
    searched = exp.trainer.biases.roles()[estimator.role]
    d = sum(p.numel() for p in searched.parameters() if p.requires_grad)
    return CMA(mean=np.zeros(max(d, 1)), sigma=1.0).population_size  # the package's default
