"""``learnreg.run``: meta-train, meta-test against the baseline, and write a run directory.

Layout of a run directory::

    config.yaml        the resolved config
    metrics.jsonl      every logged record (meta-steps, meta-test curves)
    summary.json       final test metrics, learned vs baseline, and timings
    checkpoints/       last.pt (atomic; a re-run resumes from it)
    learned/           exported biases (safetensors + JSON), one pair per learned role
    final/             the meta-test models' final parameters and buffers, per role and seed
    plots/             figures (``learnreg plot``)

Re-running on the same directory with the same config resumes from ``checkpoints/last.pt``
and ends at the same result as an uninterrupted run; a finished run returns its summary.

Under ``torchrun`` every process meta-trains its share of the tasks
(:mod:`learnreg.core.distributed`); rank 0 alone owns the run directory (lock, logs,
checkpoints, export) and runs the meta-test, the other ranks return once meta-training ends.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path

import torch

from learnreg import config as configlib
from learnreg.core import distributed
from learnreg.core.trainer import aggregate, resolve_device
from learnreg.errors import ConfigError, LearnregError, NumericalError, RunLockedError
from learnreg.experiment import Experiment, build
from learnreg.plots import plot
from learnreg.tracking.atomic import atomic_write_bytes
from learnreg.tracking.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from learnreg.tracking.export import save_bias, save_state
from learnreg.tracking.lock import RunLock
from learnreg.tracking.loggers import (
    ConsoleLogger,
    JsonlLogger,
    MultiLogger,
    WandbLogger,
    strict_json,
)


def run(
    config: str | Path | Mapping,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Meta-train and meta-test the method a config describes; write a run directory.

    Args:
        config: a YAML path or a config mapping.
        overrides: ``dotted.key=value`` strings applied on top.
        out: the run directory (default ``runs/<method>-<task>-<time>``).
        progress: show progress bars.

    Returns:
        The summary (also written to ``summary.json``).
    """
    cfg = configlib.load(config, overrides)
    resolve_device(cfg["device"])  # a missing GPU is refused before anything is written
    if distributed.init_from_env(cfg["device"]):
        if out is None:
            raise ConfigError(
                "a multi-process run needs `--out DIR` (the same run directory on every rank)"
            )
        if not distributed.is_main():
            return follow(cfg, Path(out))
    out = Path(out) if out is not None else default_run_dir(cfg)
    fresh = not out.exists() and not out.is_symlink()
    try:
        return _run_locked(cfg, out, progress)
    except LearnregError as exc:
        if fresh and not isinstance(exc, RunLockedError) and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing to resume: leave no half-written dir
        raise


def _run_locked(cfg: dict, out: Path, progress: bool) -> dict:
    with RunLock(out):
        previous = out / "config.yaml"
        # `device` may change between a checkpoint and its resume (GPU <-> CPU).
        if previous.exists() and _without_device(configlib.read_yaml(previous)) != (
            _without_device(cfg)
        ):
            raise ConfigError(
                f"{out} holds a run with a different config; choose a new --out to start another run"
            )
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        atomic_write_bytes(previous, configlib.dump(cfg).encode())
        return Run(cfg, out, progress).execute()


def _without_device(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k != "device"}


def follow(cfg: dict, out: Path) -> dict:
    """A non-zero rank's part of a multi-process run: meta-train its tasks in lockstep with
    rank 0 (resuming from rank 0's checkpoint when there is one), write nothing.

    ``out`` must be the same directory on every rank (pass ``--out``)."""
    checkpoint = out / "checkpoints" / "last.pt"
    if (out / "summary.json").exists():
        return {}
    state = load_checkpoint(checkpoint) if checkpoint.exists() else None
    if state is not None and state["run"]["phase"] != "fit":
        return {}
    exp = build(cfg)
    if state is not None:
        exp.trainer.load_state_dict(state["trainer"])
        ranks = state.get("rng_ranks") or []
        set_rng_state(ranks[distributed.rank_and_world()[0]] if ranks else state["rng"])

    def join_checkpoint(trainer) -> None:  # rank 0's Run._save, in step with it
        with distributed.gathering_state():
            trainer.state_dict()
            distributed.gather_to_main(rng_state())

    def on_step(trainer) -> None:
        if trainer.meta_step % cfg["checkpoint_every"] == 0:
            join_checkpoint(trainer)

    try:
        exp.trainer.fit(cfg["meta_steps"], on_step=on_step, progress=False)
    except NumericalError:
        join_checkpoint(exp.trainer)
        raise
    return {}


def default_run_dir(cfg: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['method']}-{cfg['task']['_component_']}-{stamp}"


class Run:
    """One run directory's life: build, resume, fit, export, meta-test, summarize."""

    def __init__(self, cfg: dict, out: Path, progress: bool):
        self.cfg, self.out, self.progress = cfg, out, progress
        self.jsonl = JsonlLogger(out / "metrics.jsonl")
        backends = cfg["logger"]["backends"]
        self.logger = MultiLogger(
            self.jsonl,
            ConsoleLogger(cfg["logger"]["every"]) if "console" in backends else None,
            WandbLogger(
                out, cfg, cfg["logger"]["project"], cfg["logger"]["group"], cfg["logger"]["tags"]
            )
            if "wandb" in backends
            else None,
        )
        self.exp: Experiment = build(cfg, self.logger)
        self.progress_state = {
            "phase": "fit",
            "meta_test": [],
            "meta_train_seconds": 0.0,
            "meta_test_seconds": 0.0,
        }
        self.checkpoint_path = out / "checkpoints" / "last.pt"

    def execute(self) -> dict:
        try:
            self._resume()
            if self.progress_state["phase"] == "fit":
                self._fit()
            self._meta_test()
            summary = self._summary()
            atomic_write_bytes(
                self.out / "summary.json", json.dumps(strict_json(summary), indent=2).encode()
            )
            plot(self.out, logger=self.logger)  # through the open W&B run: one segment
        finally:
            self.logger.close()
        self._print(summary)
        return summary

    def _fit(self) -> None:
        trainer, cfg = self.exp.trainer, self.cfg
        started = time.perf_counter()

        def on_step(tr) -> None:
            if tr.meta_step % cfg["checkpoint_every"] == 0:
                self._save(time.perf_counter() - started)

        if cfg["meta_steps"] > 0:
            try:
                trainer.fit(cfg["meta_steps"], on_step=on_step, progress=self.progress)
            except NumericalError:
                self._save(time.perf_counter() - started)  # the last good meta-parameters
                raise
        self.progress_state["meta_train_seconds"] += time.perf_counter() - started
        self.progress_state["phase"] = "meta_test"
        self._export()
        self._save(0.0)

    def _meta_test(self) -> None:
        mt, trainer = self.cfg["meta_test"], self.exp.trainer
        done = self.progress_state["meta_test"]
        clock = [time.perf_counter()]

        def on_seed(index: int, result: dict, runs: dict) -> None:
            done.append(result)
            now = time.perf_counter()
            self.progress_state["meta_test_seconds"] += now - clock[0]
            clock[0] = now
            for tag, (run, biases) in runs.items():
                save_state(run.state, self.out / "final" / f"{tag}_seed{index}.safetensors")
                if tag == "learned" and self.exp.adapt is not None:
                    for role, module in biases.learned_roles().items():
                        save_bias(
                            module,
                            self.out / "learned" / f"{role}_online_seed{index}",
                            self._meta(online_seed=index),
                        )
            self._save(0.0)

        trainer.evaluate(
            mt["steps"],
            mt["seeds"],
            self.exp.baseline if mt["baseline"] else None,
            self.exp.adapt,
            mt["eval_every"],
            self.progress,
            len(done),
            on_seed,
        )

    def _save(self, fit_seconds: float) -> None:
        state = dict(self.progress_state)
        state["meta_train_seconds"] += fit_seconds
        # While meta-training, every rank's live inner runs and RNG go into the checkpoint
        # (the other ranks join in follow()); afterwards they have returned.
        gather = state["phase"] == "fit" and distributed.is_active()
        with distributed.gathering_state() if gather else nullcontext():
            trainer = self.exp.trainer.state_dict()
            rng_ranks = distributed.gather_to_main(rng_state()) if gather else []
        save_checkpoint(
            self.checkpoint_path,
            {
                "trainer": trainer,
                "run": state,
                "rng": rng_state(),
                "rng_ranks": rng_ranks,
                "log_lines": self.jsonl.lines,
            },
        )

    def _resume(self) -> None:
        if not self.checkpoint_path.exists():  # killed before the first checkpoint: start over
            self.jsonl.truncate(0)
            return
        state = load_checkpoint(self.checkpoint_path, self.exp.trainer.device)
        self.exp.trainer.load_state_dict(state["trainer"])
        self.progress_state = state["run"]
        set_rng_state(state["rng"])
        self.jsonl.truncate(state["log_lines"])

    def _export(self) -> None:
        for role, module in self.exp.trainer.biases.learned_roles().items():
            save_bias(module, self.out / "learned" / role, self._meta())
        export = getattr(self.exp.trainer.estimator, "export", None)
        if export is not None:  # estimator-specific outputs (a search's formula and plots)
            export(self.out / "learned", self.exp.trainer.ctx)
        if (self.out / "learned").exists():
            self.logger.log_artifact(
                self.out / "learned", f"{self.cfg['method']}-learned", "learned-biases"
            )

    def _meta(self, **extra) -> dict:
        return {
            "method": self.cfg["method"],
            "task": self.exp.family.name,
            "meta_step": self.exp.trainer.meta_step,
            **extra,
        }

    def _summary(self) -> dict:
        stats = aggregate(self.progress_state["meta_test"])
        learned = stats.get("learned", {})
        return {
            "method": self.cfg["method"],
            "task": self.exp.family.name,
            "seed": self.cfg["seed"],
            "meta_steps": self.exp.trainer.meta_step,
            "meta_test_steps": self.cfg["meta_test"]["steps"],
            "meta_test_seeds": len(self.progress_state["meta_test"]),
            "test": learned.get("test", {}),
            "test_std": learned.get("test_std", {}),
            "test_ci95": learned.get("test_ci95", {}),
            "diverged": learned.get("diverged", 0),
            "baseline": {k: v for k, v in stats.get("baseline", {}).items() if k != "per_seed"},
            "per_seed": self.progress_state["meta_test"],
            "meta_train_seconds": self.progress_state["meta_train_seconds"],
            "meta_test_seconds": self.progress_state["meta_test_seconds"],
            "device": str(self.exp.trainer.device),
            "torch": torch.__version__,
        }

    def _print(self, summary: dict) -> None:
        if "console" not in self.cfg["logger"]["backends"]:
            return
        print(format_summary(summary))


def format_summary(summary: dict) -> str:
    """Learned vs baseline test metrics, one line each."""
    lines = [
        f"{summary['method']} on {summary['task']} ({summary['meta_test_seeds']} meta-test seeds):"
    ]
    for name, block in (("learned ", summary), ("baseline", summary.get("baseline") or {})):
        if block.get("test"):
            parts = [
                f"{m} {v:.4f} ± {block['test_std'].get(m, 0.0):.4f}"
                for m, v in block["test"].items()
                if m != "accuracy"
            ]
            lines.append(f"  {name}  test " + ", ".join(parts))
    for name, block in (("learned", summary), ("baseline", summary.get("baseline") or {})):
        if block.get("diverged"):
            lines.append(
                f"  WARNING: {block['diverged']} {name} run(s) diverged (per_seed.diverged_at)"
            )
    lines.append(
        f"  meta-train {summary['meta_train_seconds']:.1f}s, meta-test {summary['meta_test_seconds']:.1f}s"
    )
    return "\n".join(lines)
