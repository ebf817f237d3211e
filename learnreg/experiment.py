"""Build a meta-trainer, its baseline and its online adaptation from a resolved config."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from learnreg import components, registry
from learnreg.core.bias import Biases, adopt_role, is_learned
from learnreg.core.task import Task, TaskFamily
from learnreg.core.trainer import MetaTrainer
from learnreg.data.build import build_family
from learnreg.estimators.base import Estimator, derive_seed
from learnreg.eval.best_checkpoint import BestCheckpoint
from learnreg.eval.dead_loss import DeadLossMonitor
from learnreg.eval.tuning_cache import TuningCache, run_settings


@dataclass
class Experiment:
    """What a run needs: the trainer, the baseline biases and the online estimator."""

    cfg: dict
    trainer: MetaTrainer
    baseline: Biases
    adapt: Estimator | None

    @property
    def family(self) -> TaskFamily:
        return self.trainer.ctx.family

    def tuning_cache(self, root: str | Path) -> TuningCache:
        """The store of this run's tuned-baseline grids under ``root``
        (:mod:`learnreg.eval.tuning_cache`), keyed by the settings the grid depends on."""
        spec = baseline_optimizer(self.cfg, self.trainer.biases)
        return TuningCache(root, run_settings(self.cfg, spec, self.trainer.device))


def role_context(task: Task, seed: int) -> dict:
    """Constructor arguments the roles may take from the task."""
    return {
        "task": task,
        "kind": task.kind,
        "num_classes": task.num_classes,
        "input_shape": task.input_shape,
        "in_features": math.prod(task.input_shape),
        "out_features": task.out_features,
        "model": task.build_model(derive_seed(seed, "init")),
    }


def default_loss(kind: str) -> dict:
    return {"_component_": "ce" if kind == "classification" else "mse"}


def build_biases(cfg: dict, task: Task, loss=None, optimizer=None, init=None) -> Biases:
    """Loss, optimizer and init roles from the config, or from the given specs."""
    ctx = role_context(task, cfg["seed"])
    return Biases(
        build_role("loss", loss or cfg["loss"] or default_loss(task.kind), ctx),
        build_role("optimizer", optimizer or cfg["optimizer"], ctx),
        build_role("init", init or cfg["init"], ctx),
    )


def build_role(role: str, spec, ctx: dict):
    """One role from its spec. A registered plain ``nn.Module`` (no :class:`Bias` base)
    records the arguments that rebuild it, so that it exports like a built-in role: the
    spec's own, and the plain context values (``num_classes``...) its constructor takes."""
    spec = components.normalize_component(spec, role)
    module = components.instantiate(role, spec, **ctx)
    params = inspect.signature(registry.lookup(role, spec[components.COMPONENT])).parameters
    args = {k: v for k, v in spec.items() if k != components.COMPONENT}
    args.update({k: v for k, v in ctx.items() if k in params and k not in args and _plain_value(v)})
    return adopt_role(module, role, args)


def _plain_value(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain_value(v) for v in value)
    return isinstance(value, (int, float, str, bool)) or value is None


def baseline_optimizer(cfg: dict, learned: Biases) -> dict:
    """The baseline's optimizer spec: ``baseline.optimizer``, else the run's own fixed
    optimizer (Adam, lr 1e-3, when the optimizer itself is learned)."""
    optimizer = cfg["baseline"]["optimizer"]
    if optimizer is None:
        optimizer = (
            cfg["optimizer"]
            if not is_learned(learned.optimizer)
            else {"_component_": "adam", "lr": 1e-3}
        )
    return optimizer


def build_baseline(cfg: dict, task: Task, learned: Biases) -> Biases:
    """The comparison: the task's own loss (unless set) and the same fixed optimizer
    (Adam when the optimizer itself is learned), from the model's random init."""
    loss = cfg["baseline"]["loss"] or default_loss(task.kind)
    optimizer = baseline_optimizer(cfg, learned)
    return build_biases(cfg, task, loss=loss, optimizer=optimizer, init={"_component_": "random"})


def _meta_optimizer(spec: dict):
    return lambda params: components.instantiate("meta_optimizer", spec, params=params)


def _schedule(cfg: dict):
    """The meta learning-rate schedule factory, or None for a constant rate."""
    spec = cfg["meta_lr_schedule"]
    if spec is None:
        return None
    return lambda optimizer: components.instantiate(
        "meta_lr_schedule", spec, optimizer=optimizer, total_steps=cfg["meta_steps"]
    )


def _monitors(cfg: dict) -> list:
    monitors: list = [DeadLossMonitor(**cfg["dead_loss"])]
    best = {k: v for k, v in cfg["best_checkpoint"].items() if k != "enabled"}
    if cfg["best_checkpoint"]["enabled"]:
        monitors.append(BestCheckpoint(**best))
    return monitors


def build(cfg: dict, logger=None) -> Experiment:
    """Everything a resolved config describes, ready to ``fit`` and ``evaluate``."""
    torch.manual_seed(cfg["seed"])
    family = build_family(cfg)
    task = family.representative()
    biases = build_biases(cfg, task)
    estimator = components.instantiate("estimator", cfg["estimator"])
    trainer = MetaTrainer(
        family,
        biases,
        components.instantiate("objective", cfg["objective"]),
        estimator,
        _meta_optimizer(cfg["meta_optimizer"]),
        seed=cfg["seed"],
        device=cfg["device"],
        meta_grad_clip=cfg["meta_grad_clip"],
        max_bad_steps=cfg["max_bad_steps"],
        logger=logger,
        adapt_meta_optimizer=_meta_optimizer(
            cfg["meta_test"]["meta_optimizer"] or cfg["meta_optimizer"]
        ),
        meta_lr_schedule=_schedule(cfg),
        monitors=_monitors(cfg),
        compile_meta_test=cfg["meta_test"]["compile"],
    )
    adapt = cfg["meta_test"]["adapt"]
    adapt = components.instantiate("estimator", adapt) if adapt is not None else None
    return Experiment(cfg, trainer, build_baseline(cfg, task, biases), adapt)
