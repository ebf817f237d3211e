"""learnreg: meta-learning losses, optimizers and initializations.

The public entry points: :func:`run` (a config to a run directory), the meta-trainer
(:class:`learnreg.core.trainer.MetaTrainer`), learned and fixed losses
(:mod:`learnreg.losses`), drop-in optimizers (:mod:`learnreg.optim`), and a run's
learned few-shot biases in your own loop (:func:`load_biases`, :func:`adapt`,
:func:`adapt_state` from :mod:`learnreg.adaptation`).
"""

import importlib

#: Public names imported on first use, so `import learnreg` stays light.
_LAZY = {name: "learnreg.adaptation" for name in ("adapt", "adapt_state", "load_biases")}

__version__ = "0.1.0"


def run(
    config, overrides=None, out=None, progress: bool = True, imports=None, tune_cache=None
) -> dict:
    """Meta-train and meta-test the method a config describes (see :func:`learnreg.runner.run`)."""
    from learnreg.runner import run as _run

    return _run(config, overrides, out, progress, imports, tune_cache)


def plot(run_dir, names=None):
    """Write a run's figures under ``run_dir/plots`` (see :func:`learnreg.plots.plot`)."""
    from learnreg.plots import plot as _plot

    return _plot(run_dir, names)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'learnreg' has no attribute {name!r}")
