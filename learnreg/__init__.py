"""learnreg: meta-learning losses, optimizers and initializations.

The public entry points: :func:`run` (a config to a run directory), the meta-trainer
(:class:`learnreg.core.trainer.MetaTrainer`), learned and fixed losses
(:mod:`learnreg.losses`), and drop-in optimizers (:mod:`learnreg.optim`).
"""

__version__ = "0.1.0"


def run(config, overrides=None, out=None, progress: bool = True) -> dict:
    """Meta-train and meta-test the method a config describes (see :func:`learnreg.runner.run`)."""
    from learnreg.runner import run as _run

    return _run(config, overrides, out, progress)


def plot(run_dir, names=None):
    """Write a run's figures under ``run_dir/plots`` (see :func:`learnreg.plots.plot`)."""
    from learnreg.plots import plot as _plot

    return _plot(run_dir, names)
