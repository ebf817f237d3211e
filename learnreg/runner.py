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
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from learnreg import config as configlib
from learnreg.controls import control_config
from learnreg.core import distributed
from learnreg.core.trainer import resolve_device
from learnreg.errors import ConfigError, LearnregError, NumericalError, RunLockedError
from learnreg.eval import meta_test, probes
from learnreg.eval.baselines import base_lr, lr_grid, tune_seed
from learnreg.eval.comparison import format_summary  # noqa: F401 - learnreg.runner.format_summary
from learnreg.experiment import Experiment, build
from learnreg.imports import import_recorded
from learnreg.plots import plot
from learnreg.run_summary import summarize_run
from learnreg.threads import configure_threads
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
    imports: list[str] | None = None,
) -> dict:
    """Meta-train and meta-test the method a config describes; write a run directory.

    Args:
        config: a YAML path or a config mapping.
        overrides: ``dotted.key=value`` strings applied on top.
        out: the run directory (default ``runs/<method>-<task>-<time>``).
        progress: show progress bars (on a terminal; elsewhere one line per interval).
        imports: modules registering custom components (``--import``), recorded in the
            run's ``config.yaml`` under ``imports``; resuming ``out`` re-imports those.

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
    out = Path(out) if out is not None else default_run_dir(cfg)
    fresh = not out.exists() and not out.is_symlink()
    try:
        return _run_locked(cfg, out, progress, source_name(config))
    except LearnregError as exc:
        if fresh and not isinstance(exc, RunLockedError) and not (out / "checkpoints").exists():
            shutil.rmtree(out, ignore_errors=True)  # nothing to resume: leave no half-written dir
        raise


def _run_locked(cfg: dict, out: Path, progress: bool, source: str | None) -> dict:
    with RunLock(out):
        previous = out / "config.yaml"
        # `device` may change between a checkpoint and its resume (GPU <-> CPU).
        changed = config_changes(configlib.read_yaml(previous), cfg) if previous.exists() else []
        if changed:
            raise ConfigError(
                f"{out} holds a run with a different config ({', '.join(changed[:8])} differ); "
                "choose a new --out to start another run, or re-run with the same config"
            )
        if (out / "summary.json").exists():
            return json.loads((out / "summary.json").read_text())
        atomic_write_bytes(previous, configlib.dump(cfg).encode())
        return Run(cfg, out, progress, source).execute()


def config_changes(previous: dict, cfg: dict) -> list[str]:
    """The dotted keys whose values differ between a run directory's config and ``cfg``.

    Where a run executes (``device``, ``threads``) may change between a checkpoint and its
    resume; keys a config written by an older learnreg lacks count as their defaults."""
    previous = {**configlib.SCHEMA, **previous}
    return [
        key for key in _differences(previous, cfg) if key.split(".")[0] not in ("device", "threads")
    ]


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            found
            for key in list(a) + [k for k in b if k not in a]
            for found in _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


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


def source_name(config) -> str | None:
    """A config's name: its preset (``adalfl/digits_mlp``) or file stem; None for a dict."""
    if isinstance(config, Mapping):
        return None
    path = configlib.resolve_preset(config).resolve()
    if path.is_relative_to(configlib.PRESETS):
        return str(path.relative_to(configlib.PRESETS).with_suffix(""))
    return path.stem


def default_run_dir(cfg: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['method']}-{cfg['task']['_component_']}-{stamp}"


class Run:
    """One run directory's life: build, resume, fit, export, meta-test, summarize."""

    def __init__(self, cfg: dict, out: Path, progress: bool, source: str | None = None):
        self.cfg, self.out, self.progress = cfg, out, progress
        setting = source or cfg["method"]  # the W&B group and name start with it
        self.jsonl = JsonlLogger(out / "metrics.jsonl")
        backends = cfg["logger"]["backends"]
        self.logger = MultiLogger(
            self.jsonl,
            ConsoleLogger(
                cfg["logger"]["every"],
                meta_steps=cfg["meta_steps"],
                meta_test_steps=cfg["meta_test"]["steps"],
                meta_test_seeds=cfg["meta_test"]["seeds"],
                eval_every=cfg["meta_test"]["eval_every"],
                runs_per_seed=2 if cfg["meta_test"]["baseline"] else 1,
            )
            if "console" in backends
            else None,
            WandbLogger(
                out,
                cfg,
                cfg["logger"]["project"],
                cfg["logger"]["group"] or setting,
                cfg["logger"]["tags"],
                name=f"{setting} seed={cfg['seed']} ({out.resolve().name})",
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
            summary = strict_json(self._summary())
            atomic_write_bytes(self.out / "summary.json", json.dumps(summary, indent=2).encode())
            self.logger.log_summary(summary)
            plot(self.out, logger=self.logger)  # through the open W&B run: one segment
        finally:
            self.logger.close()
        self._print(summary)
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
        """The baseline's learning rate (and with ``tune.learned`` the learned side's)
        on every grid point, seed by seed, checkpointed after each seed."""
        tune, mt = self.cfg["baseline"]["tune"], self.cfg["meta_test"]
        if not (tune["enabled"] and mt["baseline"]):
            return
        sides = [("tuned", self.exp.baseline, None)]
        if tune["learned"]:
            sides.append(("learned_tuned", self.exp.trainer.biases, self.exp.adapt))
        done = self.progress_state.setdefault("tuning", {})
        started = time.perf_counter()
        for name, biases, adapt in sides:
            lrs = lr_grid(base_lr(biases.optimizer), tune["grid"])
            rows = done.setdefault(name, {"lrs": lrs, "seeds": []})["seeds"]
            for index in tqdm(
                range(len(rows), mt["seeds"]),
                desc=f"tune lr ({name})",
                disable=not self.progress or None,
                leave=False,
            ):
                rows.append(tune_seed(self.exp.trainer, biases, index, mt["steps"], lrs, adapt))
                self._save(0.0)
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

    def _export(self) -> None:
        # With online adaptation the results come from learned/<role>_online_seed{i}; the
        # end of meta-training (where every online run starts) is <role>_offline.
        suffix = "_offline" if self.exp.adapt is not None else ""
        for role, module in self.exp.trainer.biases.learned_roles().items():
            save_bias(module, self.out / "learned" / f"{role}{suffix}", self._meta())
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
        return summarize_run(self.cfg, self.exp, self.progress_state, self.out)

    def _print(self, summary: dict) -> None:
        if "console" not in self.cfg["logger"]["backends"]:
            return
        print(format_summary(summary))
