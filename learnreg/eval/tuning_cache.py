"""A store of tuned-baseline grids shared between runs (``learnreg run --tune-cache DIR``).

The tuned baseline of a run (:mod:`learnreg.eval.baselines`) trains the task loss at every
learning rate of the grid. What it trains depends on the task, the model, the baseline's
loss and optimizer, the step budget, the grid, the run seed and the meta-test seed, and not
on the learned side: ML3 and AdaLFL on the same task and budget train the very same grid
(a third of a Fashion-MNIST run). A cache directory keeps one JSON entry per seed, named by
a hash of those settings, written by the first run that trains it and read by every later
run whose settings are equal.

An entry holds its own key, checked on every read, so a hash collision or an entry from
another grid is never used. Only the ``tuned`` side is cached (the ``learned_tuned`` grid
trains what the run learned). The key names the settings, not the code: clear the
directory after changing code that trains the baseline. A run that reads an entry records
it (``baselines.tuned.settings.cached_seeds``); its results are those the entry's run
computed: bit for bit what it would have trained itself on the same torch version, device
type and thread count, equal up to float rounding across thread counts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

import learnreg
from learnreg.tracking.atomic import atomic_write_bytes

FORMAT = 1  # bump when an entry's layout or what the key must hold changes
CACHED_SIDES = ("tuned",)  # the learned side's grid depends on what it learned


class TuningCache:
    """Tuned-baseline grid rows, one JSON file per (settings, seed).

    Args:
        root: the cache directory (created on the first write).
        settings: what every key of this run shares (:func:`run_settings`).
    """

    def __init__(self, root: str | Path, settings: dict):
        self.root, self.settings = Path(root), settings

    def key(self, side: str, index: int, lrs: list[float]) -> dict:
        return {**self.settings, "side": side, "index": index, "lrs": list(lrs)}

    def path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.root / f"{digest[:32]}.json"

    def lookup(self, side: str, index: int, lrs: list[float]) -> dict | None:
        """The stored row of seed ``index`` (as :func:`~learnreg.eval.baselines.tune_seed`
        returns it), or None when the side is not cached or nothing equal was stored."""
        if side not in CACHED_SIDES:
            return None
        key = self.key(side, index, lrs)
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or cut short: train it again
            return None
        return entry["row"] if entry.get("key") == key else None

    def store(self, side: str, index: int, lrs: list[float], row: dict, source: str) -> None:
        """Keep seed ``index``'s row; ``source`` says which run computed it."""
        if side not in CACHED_SIDES:
            return
        key = self.key(side, index, lrs)
        entry = {"key": key, "row": row, "source": source}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path(key), json.dumps(entry, indent=1).encode())


def run_settings(cfg: dict, baseline_optimizer: dict, device: torch.device) -> dict:
    """The settings a run's tuned grid depends on (everything but the side, seed and grid).

    Args:
        cfg: the resolved config.
        baseline_optimizer: the baseline's optimizer spec
            (:func:`learnreg.experiment.baseline_optimizer`).
        device: where the grid trains.
    """
    return {
        "format": FORMAT,
        "task": cfg["task"],
        "model": cfg["model"],
        "baseline_loss": cfg["baseline"]["loss"],
        "baseline_optimizer": baseline_optimizer,
        "steps": cfg["meta_test"]["steps"],
        "compile": cfg["meta_test"].get("compile", False),
        "seed": cfg["seed"],
        "imports": cfg.get("imports") or [],
        "device": torch.device(device).type,
        "dtype": str(torch.get_default_dtype()),
        "torch": torch.__version__,
        "learnreg": learnreg.__version__,
    }
