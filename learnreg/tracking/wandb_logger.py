"""The Weights & Biases backend, and how learnreg decides between online and offline.

Offline unless credentials exist, so a run never prompts; ``$WANDB_MODE`` overrides.
Meta-training and meta-test rows get their own step metrics (``meta_step``,
``inner_step``) so their curves do not share an x-axis.
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

from learnreg.tracking.json_values import json_number
from learnreg.tracking.wandb_offline import wait_until_complete


class WandbLogger:
    """Weights & Biases backend. Offline unless credentials exist (never prompts).

    Args:
        run_dir: the learnreg run directory (wandb writes under ``run_dir/wandb``; the
            W&B run id is kept in ``run_dir/wandb_id`` so a resumed run continues it).
        config: the resolved config, logged as the W&B config.
        project: W&B project (default ``learnreg-<method>``).
        group: W&B group (seeds and sweeps of one setting share it).
        tags: W&B tags.
        name: the W&B run's display name.

    Meta-test curves go under ``meta_test/<learned|baseline>/seed_<i>/<metric>``, one
    series per meta-test seed (each row also carries ``seed``); :meth:`log_summary` puts
    the run's final summary in ``run.summary`` under summary.json's keys, nested keys
    joined with ``/``.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: dict,
        project: str | None = None,
        group: str | None = None,
        tags=(),
        name: str | None = None,
    ):
        import wandb

        run_dir = Path(run_dir)
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        if wandb.run is not None and wandb.run.id == run_id:
            self.run = wandb.run  # already started for this directory (a W&B sweep's agent)
            self.run.config.update(config, allow_val_change=True)
        else:
            self.run = wandb.init(
                project=project or f"learnreg-{config.get('method', 'custom')}",
                group=group,
                name=name,
                tags=list(tags),
                config=config,
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                mode=wandb_mode(),
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off"),
            )
        for axis, prefixes in {
            "meta_step": ("meta/*", "search/*"),
            "inner_step": ("meta_test/*",),
        }.items():
            self.run.define_metric(axis)
            for prefix in prefixes:
                self.run.define_metric(prefix, step_metric=axis)

    def log(self, metrics: dict[str, float], **axes: int) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        seed = axes.get("seed")
        if seed is not None:  # one series per seed: `meta_test/learned/seed_1/test_error`
            scalars = {_per_seed(k, seed): v for k, v in scalars.items()}
        self.run.log({**scalars, **axes})

    def log_summary(self, summary: dict) -> None:
        """The run's final summary in ``run.summary`` (the W&B runs table's columns)."""
        flat = flatten(summary)
        if "n" not in flat and "meta_test_seeds" in flat:
            flat["n"] = flat["meta_test_seeds"]  # the sample size behind every mean and CI
        self.run.summary.update(flat)

    def log_table(self, name: str, columns: list[str], rows: list[list], **axes: int) -> None:
        import wandb

        self.run.log({name: wandb.Table(columns=list(columns), data=rows), **axes})

    def log_images(self, images: dict[str, Path]) -> None:
        import wandb

        self.run.log({name: wandb.Image(str(path)) for name, path in images.items()})

    def log_artifact(self, path: str | Path, name: str, kind: str) -> None:
        import wandb

        artifact = wandb.Artifact(name, type=kind)
        path = Path(path)
        artifact.add_dir(str(path)) if path.is_dir() else artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self) -> None:
        log_file = self.run.settings.sync_file if self.run.offline else None
        self.run.finish()
        if log_file and not wait_until_complete(log_file):
            warnings.warn(
                f"W&B's offline log {log_file} was not complete 60 s after finish(); "
                "`wandb sync` may miss its last records",
                stacklevel=2,
            )


def _per_seed(key: str, seed: int) -> str:
    head, sep, metric = key.rpartition("/")
    return f"{head}/seed_{seed}/{metric}" if sep else f"seed_{seed}/{key}"


def flatten(tree: dict, prefix: str = "") -> dict:
    """Nested dicts as one level of ``a/b/c`` keys; scalars and strings only (per-seed
    lists stay in summary.json)."""
    out: dict = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = json_number(value)
    return out


def wandb_mode() -> str:
    """``$WANDB_MODE`` when set, else online with credentials and offline without."""
    return os.environ.get("WANDB_MODE") or ("online" if has_wandb_credentials() else "offline")


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")
