"""What a run directory holds besides its logs and summary: the learned biases at the end
of meta-training (``learned/``) and each meta-test seed's final states (``final/``, and
with online adaptation the adapted biases behind that seed's result)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from learnreg.experiment import Experiment
from learnreg.tracking.export import save_bias, save_state


def export_learned(out: Path, exp: Experiment, meta: dict, logger) -> None:
    """Write every learned role to ``out/learned/<role>`` (safetensors + JSON).

    With online adaptation (AdaLFL) the results come from ``<role>_online_seed{i}``, and
    the end of meta-training, where every online run starts, is ``<role>_offline``. An
    estimator's own outputs (a search's formula and plots) go to the same folder, which
    is then logged as one artifact.

    Args:
        out: the run directory.
        exp: the built experiment (its trainer holds the learned biases).
        meta: the metadata written next to each bias (method, task, meta-step).
        logger: the run's logger (``log_artifact``).
    """
    suffix = "_offline" if exp.adapt is not None else ""
    for role, module in exp.trainer.biases.learned_roles().items():
        save_bias(module, out / "learned" / f"{role}{suffix}", meta)
    export = getattr(exp.trainer.estimator, "export", None)
    if export is not None:
        export(out / "learned", exp.trainer.ctx)
    if (out / "learned").exists():
        logger.log_artifact(out / "learned", f"{exp.cfg['method']}-learned", "learned-biases")


def save_seed_outputs(
    out: Path, index: int, runs: dict, online: bool, meta: Callable[..., dict]
) -> None:
    """One finished meta-test seed: each run's final parameters and buffers, as
    ``out/final/<tag>_seed{index}.safetensors``, and with online adaptation the learned
    side's adapted biases as ``out/learned/<role>_online_seed{index}``.

    Args:
        out: the run directory.
        index: the meta-test seed.
        runs: ``{tag: (inner run, biases)}`` (``learned``, ``baseline``).
        online: whether the learned biases adapted during the run.
        meta: builds the metadata written next to a bias (``meta(online_seed=index)``).
    """
    for tag, (run, biases) in runs.items():
        save_state(run.state, out / "final" / f"{tag}_seed{index}.safetensors")
        if tag == "learned" and online:
            for role, module in biases.learned_roles().items():
                save_bias(
                    module, out / "learned" / f"{role}_online_seed{index}", meta(online_seed=index)
                )
