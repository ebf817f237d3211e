"""A config's task family (:func:`build_family`): data, the data-side half of a run.

It lives with the data rather than with the whole experiment so that what reads a
finished run (``learnreg eval``, :mod:`learnreg.adaptation`) can rebuild the tasks
without the meta-trainer, estimators and monitors.
"""

from __future__ import annotations

import functools

from learnreg import components
from learnreg.core.task import SingleTask, Task, TaskFamily
from learnreg.errors import ConfigError


def build_family(cfg: dict) -> TaskFamily:
    """The task family of a config: a registered family, or one task with its model."""
    built = components.instantiate("task", cfg["task"], model=cfg["model"])
    if isinstance(built, TaskFamily):
        return built
    if not isinstance(built, Task):
        raise ConfigError(
            f"task {cfg['task']['_component_']!r} built a {type(built).__name__}, not a Task or TaskFamily"
        )
    if cfg["model"] is None:
        raise ConfigError(
            "the config has no `model` section; e.g. `model: {_component_: mlp, hidden: [100]}`."
        )
    components.check_component(
        "model", components.normalize_component(cfg["model"], "model"), where="model"
    )
    built.model_fn = functools.partial(
        components.instantiate,
        "model",
        cfg["model"],
        input_shape=built.input_shape,
        out_features=built.out_features,
    )
    return SingleTask(built)
