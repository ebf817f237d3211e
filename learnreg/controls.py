"""Control runs: the same meta-training machinery and budget as a run, learning only what
a control needs (``baseline.controls: [learned_lr]``: a meta-learned step size on the
baseline's loss and optimizer), so a learned bias is also compared with "just learn the
step size". The runner meta-trains each control in ``RUN/controls/<name>/``.
"""

from __future__ import annotations

from learnreg.experiment import Experiment, baseline_optimizer


def control_config(cfg: dict, exp: Experiment, name: str = "learned_lr") -> dict:
    """The config of a control run: the baseline's loss and init with a meta-learned
    step size on the baseline's optimizer, trained by the run's own estimator for the
    same meta-steps and meta-tested the same way (online adaptation included).

    A search (an estimator without an outer optimizer: TaylorGLO, EvoMAL, GP-LFL) cannot
    train a step size, and its fitness (validation error) has no gradient; its control
    uses a one-step unroll on the validation loss instead, for the same meta-steps.
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
        control["estimator"] = {
            "_component_": "truncated_unroll",
            "window": 1,
            "horizon": 1,
            "objective_batch": "val",
        }
        control["objective"] = {"_component_": "task_loss"}
    control["meta_test"] = {**cfg["meta_test"], "baseline": False}
    control["baseline"] = {
        **cfg["baseline"],
        "tune": {**cfg["baseline"]["tune"], "enabled": False},
        "controls": [],
    }
    control["logger"] = {**cfg["logger"], "backends": []}
    return control
