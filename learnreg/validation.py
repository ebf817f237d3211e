"""What a run config may hold (:data:`SCHEMA`) and the checks that refuse the rest.

Unknown keys and components are errors that name the closest valid choice; settings that
do not fit together (a horizon that is not a multiple of the window, an online adaptation
by an offline estimator, adaptation on an episodic task's query set) are refused here,
when the config loads, before anything is built or written.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from learnreg import registry
from learnreg.components import COMPONENT, check_component, check_seed, normalize_component
from learnreg.errors import ConfigError

#: Component sections: section name -> registry kind.
COMPONENT_SECTIONS = {
    "task": "task",
    "model": "model",
    "loss": "loss",
    "optimizer": "optimizer",
    "init": "init",
    "objective": "objective",
    "estimator": "estimator",
    "meta_optimizer": "meta_optimizer",
    "meta_lr_schedule": "meta_lr_schedule",
}

#: Every top-level key and its default (``None``: optional). Plain sections list their keys.
SCHEMA: dict[str, Any] = {
    "method": "custom",
    "description": "",
    "seed": 0,
    "device": "auto",
    "threads": None,
    "imports": [],
    "task": None,
    "model": None,
    "loss": None,
    "optimizer": {COMPONENT: "sgd", "lr": 0.01},
    "init": {COMPONENT: "random"},
    "objective": {COMPONENT: "task_loss"},
    "estimator": {COMPONENT: "truncated_unroll"},
    "meta_optimizer": {COMPONENT: "adam", "lr": 1e-3},
    "meta_lr_schedule": None,
    "meta_steps": 100,
    "meta_grad_clip": None,
    "meta_test": {
        "steps": 1000,
        "seeds": 1,
        "adapt": None,
        "meta_optimizer": None,
        "eval_every": 100,
        "baseline": True,
        # the frozen runs' graph-free inner step through torch.compile (learnreg.core.compiled)
        "compile": False,
    },
    # tune: the baseline's learning rate chosen on validation from a grid (learnreg.eval.baselines);
    # controls: extra meta-trained comparisons (learned_lr: the task loss with a learned step size).
    "baseline": {
        "loss": None,
        "optimizer": None,
        "tune": {"enabled": True, "grid": None, "learned": False},
        "controls": [],
    },
    "logger": {"backends": ["console"], "project": None, "group": None, "tags": [], "every": 50},
    "checkpoint_every": 50,
    "max_bad_steps": 10,
    # Monitors (learnreg.core.monitors): dead learned losses, best-checkpoint selection.
    "dead_loss": {"policy": "warn", "every": 50, "p_min": 0.3, "rel_tol": 1e-3, "max_restarts": 3},
    "best_checkpoint": {"enabled": False, "every": 0.1, "steps": 500, "seeds": 1},
}
LOGGER_BACKENDS = ("console", "wandb", "none")  # metrics.jsonl is always written
PLAIN_SECTIONS = {k for k, v in SCHEMA.items() if isinstance(v, dict) and COMPONENT not in v}


def validate(raw: dict) -> dict:
    """Check keys and component names/arguments, and fill defaults."""
    _check_keys("config", raw, SCHEMA)
    cfg: dict = {}
    for key, default in SCHEMA.items():
        value = raw.get(key, copy.deepcopy(default))
        if key in PLAIN_SECTIONS:
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ConfigError(f"section {key!r} must be a mapping, got {value!r}")
            _check_keys(key, value, default)
            value = {**copy.deepcopy(default), **value}
        elif key in COMPONENT_SECTIONS and value is not None:
            value = normalize_component(value, key)
            check_component(COMPONENT_SECTIONS[key], value, where=key)
        cfg[key] = value
    if cfg["task"] is None:
        raise ConfigError("the config has no `task` section; e.g. `task: {_component_: digits}`.")
    _check_scalars(cfg)
    _check_monitors(cfg)
    if cfg["device"] not in ("auto", "cpu", "cuda") and not str(cfg["device"]).startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg['device']!r}")
    _check_nested_components(cfg)
    return cfg


def _check_scalars(cfg: dict) -> None:
    """Types and ranges of the plain settings (counts, seeds, clip, logger backends)."""
    for key in ("seed", "meta_steps", "checkpoint_every", "max_bad_steps"):
        _expect(key, cfg[key], int)
    if cfg["threads"] is not None and (
        not isinstance(cfg["threads"], int)
        or isinstance(cfg["threads"], bool)
        or cfg["threads"] < 0
    ):
        raise ConfigError(
            f"threads must be a whole number >= 0 (0: torch's default) or null, got {cfg['threads']!r}"
        )
    for key in ("steps", "seeds", "eval_every"):
        _expect(f"meta_test.{key}", cfg["meta_test"][key], int)
    _expect("logger.every", cfg["logger"]["every"], int)
    for where, value, low in (
        ("meta_steps", cfg["meta_steps"], 0),
        ("checkpoint_every", cfg["checkpoint_every"], 1),
        ("max_bad_steps", cfg["max_bad_steps"], 1),
        ("meta_test.steps", cfg["meta_test"]["steps"], 0),
        ("meta_test.seeds", cfg["meta_test"]["seeds"], 1),
        ("meta_test.eval_every", cfg["meta_test"]["eval_every"], 0),  # 0: at the end only
        ("logger.every", cfg["logger"]["every"], 1),
    ):
        if value < low:
            raise ConfigError(
                f"{where} must be at least {low}, got {value}; e.g. `{where}={max(low, 1)}`"
            )
    check_seed("seed", cfg["seed"])
    for key in ("baseline", "compile"):
        if not isinstance(cfg["meta_test"][key], bool):
            raise ConfigError(
                f"meta_test.{key} must be true or false, got {cfg['meta_test'][key]!r}"
            )
    if cfg["meta_grad_clip"] is not None and (
        not isinstance(cfg["meta_grad_clip"], (int, float)) or cfg["meta_grad_clip"] <= 0
    ):
        raise ConfigError(
            f"meta_grad_clip must be a positive number or null, got {cfg['meta_grad_clip']!r}"
        )
    for backend in cfg["logger"]["backends"]:
        if backend not in LOGGER_BACKENDS:
            close = difflib.get_close_matches(str(backend), LOGGER_BACKENDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"logger.backends: unknown backend {backend!r}.{hint} Choose from {', '.join(LOGGER_BACKENDS)}."
            )


def _check_nested_components(cfg: dict) -> None:
    """Normalise and check the components nested in the baseline and meta_test sections."""
    cfg["baseline"]["tune"] = _baseline_tune(cfg["baseline"]["tune"])
    cfg["baseline"]["controls"] = _baseline_controls(cfg["baseline"]["controls"])
    for sub in ("loss", "optimizer"):
        if cfg["baseline"][sub] is not None:
            cfg["baseline"][sub] = normalize_component(cfg["baseline"][sub], f"baseline.{sub}")
            check_component(sub, cfg["baseline"][sub], where=f"baseline.{sub}")
    if cfg["meta_test"]["meta_optimizer"] is not None:
        spec = normalize_component(cfg["meta_test"]["meta_optimizer"], "meta_test.meta_optimizer")
        check_component("meta_optimizer", spec, where="meta_test.meta_optimizer")
        cfg["meta_test"]["meta_optimizer"] = spec
    if cfg["meta_test"]["adapt"] is not None:
        cfg["meta_test"]["adapt"] = normalize_component(
            cfg["meta_test"]["adapt"], "meta_test.adapt"
        )
        check_component("estimator", cfg["meta_test"]["adapt"], where="meta_test.adapt")
        _check_adapt_online(cfg["meta_test"]["adapt"][COMPONENT])
        _check_adapt_batch(cfg)


TUNE_DEFAULT = SCHEMA["baseline"]["tune"]
CONTROLS = ("learned_lr",)


def _baseline_tune(value: Any) -> dict:
    """``baseline.tune`` as a mapping: ``true``/``false``, ``learned`` (tune the learned
    side's learning rate too) or ``{enabled, grid, learned}``."""
    if isinstance(value, bool) or value is None:
        return {**TUNE_DEFAULT, "enabled": bool(value)}
    if value == "learned":
        return {**TUNE_DEFAULT, "learned": True}
    if not isinstance(value, dict):
        raise ConfigError(
            f"baseline.tune must be true, false, learned or a mapping {{enabled, grid, learned}}, got {value!r}"
        )
    _check_keys("baseline.tune", value, TUNE_DEFAULT)
    tune = {**TUNE_DEFAULT, **value}  # a copy: the schema's default stays untouched
    grid = tune["grid"]
    if grid is not None and (
        not isinstance(grid, list)
        or not grid
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in grid)
    ):
        raise ConfigError(
            f"baseline.tune.grid must be a list of positive learning rates (or null), got {grid!r}"
        )
    if not isinstance(tune["enabled"], bool) or not isinstance(tune["learned"], bool):
        raise ConfigError("baseline.tune.enabled and baseline.tune.learned must be true or false")
    return tune


def _baseline_controls(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or any(v not in CONTROLS for v in value):
        raise ConfigError(
            f"baseline.controls must be a list drawn from {list(CONTROLS)}, got {value!r}"
        )
    return list(value)


def _check_monitors(cfg: dict) -> None:
    dead, best = cfg["dead_loss"], cfg["best_checkpoint"]
    policies = ("off", "warn", "restart", "stop")
    if dead["policy"] not in policies:
        raise ConfigError(
            f"dead_loss.policy must be one of {', '.join(policies)}, got {dead['policy']!r}"
        )
    for key in ("every", "max_restarts"):
        _expect(f"dead_loss.{key}", dead[key], int)
    for key in ("steps", "seeds"):
        _expect(f"best_checkpoint.{key}", best[key], int)
    if not isinstance(best["enabled"], bool):
        raise ConfigError(f"best_checkpoint.enabled must be true or false, got {best['enabled']!r}")
    if not isinstance(best["every"], (int, float)) or not 0 < best["every"] <= 1:
        raise ConfigError(
            f"best_checkpoint.every is a fraction of the meta-steps in (0, 1], got {best['every']!r}"
        )
    if dead["every"] < 1 or best["steps"] < 1 or best["seeds"] < 1:
        raise ConfigError(
            "dead_loss.every, best_checkpoint.steps and best_checkpoint.seeds must be positive"
        )


def _check_adapt_online(name: str) -> None:
    """Refuse a meta-test adaptation by an estimator that cannot adapt along one run (its
    ``online`` is False: :meth:`~learnreg.core.estimator.Estimator.attach` would refuse)."""
    if getattr(registry.lookup("estimator", name), "online", False):
        return
    online = [e.name for e in registry.entries("estimator") if getattr(e.target, "online", False)]
    raise ConfigError(
        f"meta_test.adapt: estimator {name!r} cannot adapt online during meta-test (its "
        "online is False: it does not keep learning along one run). Use an online estimator "
        f"({', '.join(online) or 'none registered'}) or drop meta_test.adapt."
    )


def _check_adapt_batch(cfg: dict) -> None:
    """Refuse a meta-test adaptation that would read the meta-test labels: on an episodic
    task (``val_is_query``) the ``val`` split is the query set the run is scored on."""
    task = registry.lookup("task", cfg["task"][COMPONENT])
    adapt = cfg["meta_test"]["adapt"]
    param = _signature_params(registry.lookup("estimator", adapt[COMPONENT])).get("objective_batch")
    batch = adapt.get("objective_batch", param.default if param is not None else None)
    local = adapt.get("local_search")
    if isinstance(local, dict) and local.get("objective_batch") == "val":
        batch = "val"
    if getattr(task, "val_is_query", False) and batch == "val":
        raise ConfigError(
            f"meta_test.adapt adapts on objective_batch 'val', but task "
            f"{cfg['task'][COMPONENT]!r} is episodic: its val split is the query set the "
            "meta-test scores, so the learned roles would adapt on meta-test labels. Set "
            "meta_test.adapt.objective_batch=train (the support set), or drop meta_test.adapt."
        )


def _signature_params(target) -> dict:
    try:
        return dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}


def _check_keys(where: str, given: dict, allowed: Mapping) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(k) for k in allowed], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(allowed)}."
            )


def _expect(where: str, value: Any, typ: type) -> None:
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ConfigError(f"{where} must be {typ.__name__}, got {value!r} ({type(value).__name__})")
