"""A run's ``summary.json``: what the run directory's readers (the console table, the
benchmarks, old scripts reading ``baseline``) get, built from the finished phases."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from learnreg import config as configlib
from learnreg.eval import comparison, meta_test
from learnreg.eval.baselines import primary_metric
from learnreg.experiment import baseline_optimizer
from learnreg.tracking.export import load_bias


def summarize_run(cfg: dict, exp, progress: dict, out: Path) -> dict:
    """The run's ``summary.json``: the learned result, every baseline block (same settings,
    tuned, controls), the paired comparisons, ``n`` and ``n_test``, timings and device.

    Args:
        cfg: the resolved config.
        exp: the run's :class:`~learnreg.experiment.Experiment`.
        progress: the run's progress state (meta-test seeds, tuning, timings).
        out: the run directory (controls' summaries are read from ``out/controls``).
    """
    per_seed = progress["meta_test"]
    stats = meta_test.aggregate(per_seed)
    learned = stats.get("learned", {})
    test_task = exp.family.meta_test_task(0)
    n_test = len(test_task.test)  # test examples behind each seed's test metrics
    metric = primary_metric(test_task.kind)
    baselines = baseline_blocks(cfg, exp, progress, out, stats, n_test, metric)
    learned_rows = [r["learned"] for r in per_seed]
    summary = {
        "method": cfg["method"],
        "task": exp.family.name,
        "seed": cfg["seed"],
        "meta_steps": exp.trainer.meta_step,
        "meta_test_steps": cfg["meta_test"]["steps"],
        "meta_test_seeds": len(per_seed),
        "test": learned.get("test", {}),
        "test_std": learned.get("test_std", {}),
        "test_ci95": learned.get("test_ci95", {}),
        "n": len(per_seed),
        "n_test": n_test,
        "diverged": learned.get("diverged", 0),
        "baselines": baselines,
        # old readers: `baseline` is the tuned baseline (same settings when untuned)
        "baseline": baselines.get("tuned", baselines.get("same_settings", {})),
        "paired": comparison.paired_table(learned_rows, baselines),
        "per_seed": per_seed,
        "meta_train_seconds": progress["meta_train_seconds"],
        "meta_test_seconds": progress["meta_test_seconds"],
        "tune_seconds": progress.get("tune_seconds", 0.0),
        "controls_seconds": sum(
            b["settings"].get("seconds", 0.0) for b in baselines.values() if "settings" in b
        ),
        "device": str(exp.trainer.device),
        "torch": torch.__version__,
    }
    tuned_learned = progress.get("tuning", {}).get("learned_tuned")
    if tuned_learned:  # both sides tuned with the same grid and budget
        summary["learned_tuned"] = comparison.tuned_block(
            tuned_learned["lrs"], tuned_learned["seeds"], metric, n_test, {}
        )
        summary["paired"]["learned_tuned_vs_tuned"] = comparison.paired_table(
            summary["learned_tuned"]["per_seed"],
            {"tuned": baselines.get("tuned", {"per_seed": []})},
        ).get("tuned", {})
    return summary


def baseline_blocks(
    cfg: dict, exp, progress: dict, out: Path, stats: dict, n_test: int, metric: str
) -> dict:
    """``same_settings``, ``tuned`` and each control, in the same block shape."""
    blocks = {}
    if "baseline" in stats:
        spec = baseline_optimizer(cfg, exp.trainer.biases)
        settings = {"optimizer": spec, "loss": cfg["baseline"]["loss"] or "task loss"}
        lr = exp.baseline.optimizer.init_args.get("lr")
        blocks["same_settings"] = comparison.block(
            stats["baseline"]["per_seed"], n_test, {**settings, "lr": lr}
        )
    tuned = progress.get("tuning", {}).get("tuned")
    if tuned:
        blocks["tuned"] = comparison.tuned_block(
            tuned["lrs"],
            tuned["seeds"],
            metric,
            n_test,
            {"optimizer": baseline_optimizer(cfg, exp.trainer.biases)}
            | ({"cached_seeds": tuned["cached"]} if tuned.get("cached") else {}),
        )
    for name in cfg["baseline"]["controls"] if "baseline" in stats else []:
        sub_dir = out / "controls" / name
        sub = json.loads((sub_dir / "summary.json").read_text())
        exported = sub_dir / "learned"  # `optimizer_offline` when it adapted online
        offline = exported / "optimizer_offline"
        path = offline if offline.with_suffix(".json").exists() else exported / "optimizer"
        rule = load_bias(path, "optimizer")
        settings = {
            "run_dir": f"controls/{name}",
            "optimizer": configlib.read_yaml(sub_dir / "config.yaml")["optimizer"],
            "meta_learned_scale": rule.scale,
            "meta_learned_lr": rule.lr,
            "meta_steps": sub["meta_steps"],
            "meta_train_seconds": sub["meta_train_seconds"],
            "seconds": sub["meta_train_seconds"] + sub["meta_test_seconds"],
        }
        blocks[name] = comparison.block([r["learned"] for r in sub["per_seed"]], n_test, settings)
    return blocks
