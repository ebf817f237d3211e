"""``learnreg.run``: meta-train, meta-test against the baseline, and write a run directory.

Layout of a run directory::

    config.yaml        the resolved config
    metrics.jsonl      every logged record (meta-steps, meta-test curves)
    summary.json       final test metrics, learned vs the baselines (same settings, tuned,
                       controls), paired statistics, and timings
    controls/          the meta-trained controls' own run directories (controls/learned_lr)
    checkpoints/       last.pt (atomic; a re-run resumes from it)
    learned/           exported biases (safetensors + JSON), one pair per learned role;
                       with online adaptation (AdaLFL) <role>_offline (end of meta-training)
                       and <role>_online_seed{i} (the adapted biases behind the results)
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
from pathlib import Path

from learnreg import config as configlib
from learnreg.controls import control_config
from learnreg.core import distributed
from learnreg.core.trainer import resolve_device
from learnreg.errors import ConfigError, LearnregError, NumericalError, RunLockedError
from learnreg.eval import meta_test, probes
from learnreg.eval.baselines import tune_sides
from learnreg.eval.comparison import format_summary  # also learnreg.runner.format_summary
from learnreg.eval.grid_runs import base_lr
from learnreg.experiment import Experiment, build
from learnreg.follower import follow
from learnreg.imports import import_recorded
from learnreg.plots import plot
from learnreg.run_outputs import export_learned, save_seed_outputs
from learnreg.run_summary import summarize_run
from learnreg.threads import configure_threads
from learnreg.tracking.atomic import atomic_write_bytes
from learnreg.tracking.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from learnreg.tracking.lock import RunLock
from learnreg.tracking.loggers import strict_json
from learnreg.tracking.run_loggers import run_loggers


def run(
    config: str | Path | Mapping,
    overrides: list[str] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    imports: list[str] | None = None,
    tune_cache: str | Path | None = None,
) -> dict:
    """Meta-train and meta-test the method a config describes; write a run directory.

    Args:
        config: a YAML path or a config mapping.
        overrides: ``dotted.key=value`` strings applied on top.
        out: the run directory (default ``runs/<method>-<task>-<time>``).
        progress: show progress bars (on a terminal; elsewhere one line per interval).
        imports: modules registering custom components (``--import``), recorded in the
            run's ``config.yaml`` under ``imports``; resuming ``out`` re-imports those.
        tune_cache: a directory of tuned-baseline grids shared between runs
            (:mod:`learnreg.eval.tuning_cache`): a grid seed another run trained with
            equal settings is read instead of trained. Not part of the config: the
            results are the same with or without it.

    Returns:
        The summary (also written to ``summary.json``).
    """
    if out is not None:  # a resume rebuilds the custom components its first run imported
        imports = [*import_recorded(out), *(imports or [])]
    cfg = configlib.load(config, overrides, imports)
    resolve_device(cfg["device"])  # a missing GPU is refused before anything is written
    configure_threads(cfg["threads"])
    if distributed.init_from_env(cfg["device"]):
        if out is None:
            raise ConfigError(
                "a multi-process run needs `--out DIR` (the same run directory on every rank)"
            )
        if not distributed.is_main():
            return follow(cfg, Path(out))
    out = Path(out) if out is not None else configlib.default_run_dir(cfg)
    fresh = not out.exists() and not out.is_symlink()
    try:
        return _run_locked(cfg, out, progress, configlib.source_name(config), tune_cache)
    except LearnregError as exc:
        if fresh and not isinstance(exc, RunLockedError) and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing to resume: leave no half-written dir
        raise


def _run_locked(
    cfg: dict, out: Path, progress: bool, source: str | None, tune_cache: str | Path | None
) -> dict:
    with RunLock(out):
        previous = out / "config.yaml"
        # `device` may change between a checkpoint and its resume (GPU <-> CPU).
        changed = (
            configlib.config_changes(configlib.read_yaml(previous), cfg)
            if previous.exists()
            else []
        )
        if changed:
            raise ConfigError(
                f"{out} holds a run with a different config ({', '.join(changed[:8])} differ); "
                "choose a new --out to start another run, or re-run with the same config"
            )
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        atomic_write_bytes(previous, configlib.dump(cfg).encode())
        return Run(cfg, out, progress, source, tune_cache).execute()


class Run:
    """One run directory's life: build, resume, fit, export, meta-test, summarize."""

    def __init__(
        self,
        cfg: dict,
        out: Path,
        progress: bool,
        source: str | None = None,
        tune_cache: str | Path | None = None,
    ):
        self.cfg, self.out, self.progress, self.tune_cache = cfg, out, progress, tune_cache
        setting = source or cfg["method"]  # the W&B group and name start with it
        self.jsonl, self.logger = run_loggers(cfg, out, setting)
        self.exp: Experiment = build(cfg, self.logger)
        self.progress_state = {
            "phase": "fit",
            "meta_test": [],
            "meta_train_seconds": 0.0,
            "meta_test_seconds": 0.0,
        }
        self.checkpoint_path = out / "checkpoints" / "last.pt"
        tune = cfg["baseline"]["tune"]
        if tune["enabled"] and cfg["meta_test"]["baseline"]:  # fail now, not after meta-training
            base_lr(self.exp.baseline.optimizer)
            if tune["learned"]:
                base_lr(self.exp.trainer.biases.optimizer)

    def execute(self) -> dict:
        try:
            self._resume()
            if self.progress_state["phase"] == "fit":
                self._fit()
            self._meta_test()
            self._tune()
            self._controls()
            # as written: NaN (an interval of one seed, a diverged run) is the string "nan",
            # so a fresh run's summary equals the one a finished run reads back
            summary = strict_json(summarize_run(self.cfg, self.exp, self.progress_state, self.out))
            atomic_write_bytes(self.out / "summary.json", json.dumps(summary, indent=2).encode())
            self.logger.log_summary(summary)
            plot(self.out, logger=self.logger)  # through the open W&B run: one segment
        finally:
            self.logger.close()
        if "console" in self.cfg["logger"]["backends"]:
            print(format_summary(summary))
        return summary

    def _fit(self) -> None:
        trainer, cfg = self.exp.trainer, self.cfg
        started = time.perf_counter()

        probing = bool({"console", "wandb"} & set(cfg["logger"]["backends"]))

        def on_step(tr) -> None:
            if (
                probing
                and cfg["meta_test"]["baseline"]
                and tr.meta_step % cfg["logger"]["every"] == 0
            ):
                self._probe(tr)
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
        export_learned(self.out, self.exp, self._meta(), self.logger)
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
            save_seed_outputs(self.out, index, runs, self.exp.adapt is not None, self._meta)
            self._save(0.0)

        meta_test.evaluate(
            trainer,
            mt["steps"],
            mt["seeds"],
            self.exp.baseline if mt["baseline"] else None,
            self.exp.adapt,
            mt["eval_every"],
            self.progress,
            len(done),
            on_seed,
        )

    def _probe(self, trainer) -> None:
        """Interpretable meta-training diagnostics (:mod:`learnreg.eval.probes`)."""
        metrics = probes.one_step_gain(trainer.ctx, self.exp.baseline, trainer.meta_step)
        steps = min(probes.PROBE_STEPS, self.cfg["meta_test"]["steps"])  # few-shot: its 5 steps
        metrics.update(probes.short_validation(trainer, self.exp.baseline, steps))
        self.logger.log(metrics, meta_step=trainer.meta_step)

    def _tune(self) -> None:
        """The baseline's learning rate (with ``tune.learned`` also the learned side's) on
        every grid point, seed by seed (:func:`~learnreg.eval.baselines.tune_sides`),
        checkpointed after each seed."""
        tune, mt = self.cfg["baseline"]["tune"], self.cfg["meta_test"]
        if not (tune["enabled"] and mt["baseline"]):
            return
        sides = {"tuned": (self.exp.baseline, None)}
        if tune["learned"]:
            sides["learned_tuned"] = (self.exp.trainer.biases, self.exp.adapt)
        cache = self.exp.tuning_cache(self.tune_cache) if self.tune_cache is not None else None
        started = time.perf_counter()
        tune_sides(
            self.exp.trainer,
            sides,
            tune["grid"],
            mt["seeds"],
            mt["steps"],
            self.progress_state.setdefault("tuning", {}),
            on_seed=lambda: self._save(0.0),
            progress=self.progress,
            cache=cache,
            source=str(self.out),
        )
        self.progress_state["tune_seconds"] = self.progress_state.get("tune_seconds", 0.0) + (
            time.perf_counter() - started
        )
        self._save(0.0)

    def _controls(self) -> None:
        """Meta-train and meta-test each control in its own run directory (resumable),
        with the run's estimator, budget, seeds and meta-test protocol."""
        if not self.cfg["meta_test"]["baseline"]:
            return
        for name in self.cfg["baseline"]["controls"]:
            run(
                control_config(self.cfg, self.exp),
                out=self.out / "controls" / name,
                progress=self.progress,
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

    def _meta(self, **extra) -> dict:
        return {
            "method": self.cfg["method"],
            "task": self.exp.family.name,
            "meta_step": self.exp.trainer.meta_step,
            **extra,
        }
