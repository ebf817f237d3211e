"""A learned optimizer meta-trained by PES vs by truncated backprop, on one optimizee family
and one budget, paired by seed; and both estimators' meta-gradient variance at fixed
meta-parameters.

Both arms are ``lo/mlp_none`` (the per-parameter MLP rule, Fashion-MNIST MLP optimizees,
meta-tested on an unseen width) with the same meta-optimizer, meta-steps, window and
horizon; only the estimator differs. ``tbptt`` is the preset's truncated backprop
(meta-batch 2); ``pes`` is :class:`~learnreg.estimators.PES` with 4 antithetic pairs on
2 tasks, whose meta-step costs about what truncated backprop's does on one CPU thread
(8 graph-free inner runs against 2 differentiated ones). Seed ``s`` of both arms draws the
same meta-training tasks' sequence and is meta-tested on the same unseen optimizees
(model seeds and batch order), so the per-seed differences are paired.

Resumable: each run directory returns its summary when finished and resumes from its
checkpoint otherwise; ``results.json`` and ``table.md`` are rewritten after every run.

    nice -n 19 python -m benchmarks.pes_vs_tbptt --seeds 10 --out /work/bench_runs/pes
    python -m benchmarks.pes_vs_tbptt --table --out /work/bench_runs/pes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings
from pathlib import Path

import torch

import learnreg
from benchmarks.common import machine
from learnreg import components
from learnreg import config as configlib
from learnreg.core import metaparams
from learnreg.core.estimator import Estimator, derive_seed
from learnreg.eval.stats import format_mean, paired, summarize
from learnreg.experiment import build

PRESET = "lo/mlp_none"
BUDGET = [
    "meta_steps=40",
    "estimator.window=10",
    "estimator.horizon=100",
    "meta_test.steps=200",
    "meta_test.seeds=3",
    "meta_test.eval_every=0",
    "baseline.tune.enabled=false",
    "baseline.controls=[]",
    "logger.backends=[]",
    "device=cpu",
]
PES = [
    "estimator={_component_: pes, sigma: 0.01, pairs: 4, window: 10, horizon: 100, meta_batch: 2,"
    " average: true, objective_batch: train, vmap: false}"
]
ARMS = {"tbptt": [], "pes": PES}


def run_dir(root: Path, arm: str, seed: int) -> Path:
    return root / "runs" / arm / f"seed{seed}"


def accuracy(summary: dict) -> float:
    """Meta-test accuracy on the unseen optimizees, averaged over the meta-test seeds."""
    return 1.0 - summary["test"]["error"]


def meta_train(root: Path, seeds: int) -> None:
    for seed in range(seeds):
        for arm, overrides in ARMS.items():
            start = time.time()
            summary = learnreg.run(
                PRESET,
                [*BUDGET, *overrides, f"seed={seed}"],
                out=run_dir(root, arm, seed),
                progress=False,
            )
            print(
                f"{arm} seed {seed}: accuracy {accuracy(summary):.4f} ({time.time() - start:.0f} s)",
                flush=True,
            )
            write_table(root)


def gradient_of(estimator, ctx) -> torch.Tensor:
    """One meta-step's meta-gradient estimate at the current meta-parameters, applied to
    nothing (the estimators that still use the older ``step`` are read from ``.grad``)."""
    if type(estimator).estimate is not Estimator.estimate:
        return metaparams.flatten(estimator.estimate(ctx).grads)
    ctx.biases.zero_grad(set_to_none=True)
    estimator._refresh_runs(ctx)
    for run in estimator.runs:
        estimator.unroll(ctx, run, scale=1.0 / len(estimator.runs))
    grads = [
        p.grad if p.grad is not None else torch.zeros_like(p) for p in ctx.biases.meta_parameters()
    ]
    ctx.biases.zero_grad(set_to_none=True)
    return torch.cat([g.flatten() for g in grads])


def variance(root: Path, repeats: int, windows: int) -> None:
    """Each estimator's estimates at the seed-0 initial rule: ``repeats`` independent
    estimators (other tasks, model seeds, batches and noise) over the first ``windows``
    windows of a horizon. At each window position, the spread over repeats; then averaged
    over positions."""
    out = root / "variance.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    for arm, overrides in ARMS.items():
        if arm in done:
            continue
        cfg = configlib.load(PRESET, [*BUDGET, *overrides, "seed=0"])
        exp, spec = build(cfg), cfg["estimator"]
        ctx0 = exp.trainer.ctx
        estimates = []  # (repeats, windows, D)
        start = time.time()
        for rep in range(repeats):
            ctx = dataclasses.replace(ctx0, seed=derive_seed("variance", rep))
            estimator = components.instantiate("estimator", spec)
            estimates.append(torch.stack([gradient_of(estimator, ctx) for _ in range(windows)]))
        g = torch.stack(estimates).double()
        mean = g.mean(0)  # (windows, D)
        trace = ((g - mean) ** 2).sum(-1).sum(0) / (repeats - 1)  # tr Σ per window position
        done[arm] = {
            "trace_cov": trace.mean().item(),
            "mean_norm_sq": (mean**2).sum(-1).mean().item(),
            "mean_gradient": mean.mean(0).tolist(),
            "repeats": repeats,
            "windows": windows,
            "seconds": time.time() - start,
        }
        out.write_text(json.dumps(done))
        print(f"variance {arm}: tr cov {done[arm]['trace_cov']:.4g}", flush=True)
    write_table(root)


def write_table(root: Path) -> None:
    summaries: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for arm in ARMS:
        for path in sorted((root / "runs" / arm).glob("seed*/summary.json")):
            summaries[arm][int(path.parent.name[4:])] = json.loads(path.read_text())
    seeds = sorted(set(summaries["pes"]) & set(summaries["tbptt"]))
    lines = [f"Machine: {machine('cpu')}. Budget: {' '.join(BUDGET)}.", ""]
    lines += [
        "| estimator | meta-test accuracy (unseen optimizees) | meta-train time (s) |",
        "|---|---|---|",
    ]
    results: dict = {"seeds": seeds}
    for arm in ARMS:
        acc = [accuracy(summaries[arm][s]) for s in seeds]
        secs = [summaries[arm][s]["meta_train_seconds"] for s in seeds]
        if acc:
            lines.append(
                f"| {arm} | {format_mean(summarize(acc))} | {format_mean(summarize(secs), 0)} |"
            )
        results[arm] = {"accuracy": acc, "meta_train_seconds": secs}
    if len(seeds) >= 2:
        d = paired(results["pes"]["accuracy"], results["tbptt"]["accuracy"], "accuracy")
        results["paired"] = d
        lines += [
            "",
            f"PES − TBPTT accuracy, paired by seed: {d['mean_diff']:+.4f}, 95% t CI "
            f"[{d['ci95_low']:+.4f}, {d['ci95_high']:+.4f}], n={d['n']}, p={d['p_value']:.3g}, "
            f"PES better on {d['wins']} seeds: {d['verdict'].replace('learned', 'PES').replace('baseline', 'TBPTT')}.",
        ]
    var_path = root / "variance.json"
    if var_path.exists():
        var = json.loads(var_path.read_text())
        results["variance"] = var
        lines += ["", "| estimator | tr Cov(ĝ) | ‖E ĝ‖² | repeats × windows |", "|---|---|---|---|"]
        for arm, v in var.items():
            lines.append(
                f"| {arm} | {v['trace_cov']:.4g} | {v['mean_norm_sq']:.4g} | {v['repeats']} × {v['windows']} |"
            )
        if len(var) == 2:
            a, b = (torch.tensor(var[k]["mean_gradient"]) for k in ARMS)
            cos = float(a @ b / (a.norm() * b.norm())) if a.norm() * b.norm() > 0 else math.nan
            lines.append(f"\nCosine between the two estimators' mean gradients: {cos:.3f}.")
    (root / "results.json").write_text(json.dumps(results, indent=1))
    (root / "table.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/work/bench_runs/pes"))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=8, help="estimators per variance figure")
    parser.add_argument("--windows", type=int, default=5, help="windows per variance repeat")
    parser.add_argument("--table", action="store_true", help="only rebuild the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*batching rule.*")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        variance(args.out, args.repeats, args.windows)
        meta_train(args.out, args.seeds)
    write_table(args.out)
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
