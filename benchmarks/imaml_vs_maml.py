"""iMAML vs MAML on sine regression: meta-test MSE, peak memory and time per meta-step.

Two parts, each resumable (finished pieces are read back from ``OUT``):

* **quality**: ``maml/sine_paper`` and ``imaml/sine`` meta-trained for the same number of
  meta-steps (``--meta-steps``) through ``learnreg.run``, both meta-tested on the same 600
  episodes (paired), plus the random-init rung with its inner lr tuned on meta-validation
  episodes (:func:`benchmarks.few_shot.random_init_rung`);
* **memory**: for each number of inner steps K, one fresh process per method runs a few
  meta-steps of that preset with K inner steps and reports its peak resident set size
  above the size just before the first meta-step (``resource.getrusage`` maxrss) and the
  median seconds per meta-step. MAML keeps every inner step's graph for the backward
  pass, so its memory grows with K; iMAML's implicit gradient needs only φ*, so it should
  not (Rajeswaran et al. 2019, sec. 3 and Fig. 2).

* **convergence** (a diagnostic, meta-training only, no meta-test episode is read):
  ``imaml/sine`` at other proximal strengths (``--lams``), the meta-training query loss and
  the inner solve's stationarity residual per block of 100 meta-steps, next to the
  quality run's own (λ = 2).

Run: ``nice -n 19 python -m benchmarks.imaml_vs_maml [--meta-steps 1000] [--steps 1 4 16 64]
[--out DIR]``; ``--part quality``, ``memory`` or ``convergence [--lams 10]`` runs one part.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from benchmarks.common import machine
from benchmarks.few_shot import random_init_rung, t_interval
from learnreg import config as configlib
from learnreg.core.estimator import meta_step
from learnreg.experiment import build
from learnreg.runner import run

PRESETS = {"MAML (paper)": "maml/sine_paper", "iMAML": "imaml/sine"}


def k_overrides(preset: str, k: int) -> list[str]:
    """The preset with K inner steps (MAML: a K-step window; iMAML: K proximal steps)."""
    if preset.startswith("maml"):
        return [f"estimator.window={k}", f"estimator.horizon={k}"]
    return [f"estimator.steps={k}"]


def worker(preset: str, k: int, repeats: int) -> dict:
    """Peak RSS above the built state over ``repeats`` meta-steps, and their median time."""
    torch.set_num_threads(1)
    overrides = ["device=cpu", "logger.backends=[none]", *k_overrides(preset, k)]
    exp = build(configlib.load(f"configs/{preset}.yaml", overrides))
    ctx, estimator = exp.trainer.ctx, exp.trainer.estimator
    before = psutil.Process().memory_info().rss
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        meta_step(ctx, estimator)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_mib": (peak - before) / 2**20, "seconds": statistics.median(seconds[1:])}


def memory_part(steps: list[int], repeats: int, out: Path) -> dict:
    path = out / "memory.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    for k in steps:
        for name, preset in PRESETS.items():
            key = f"{name}|{k}"
            if key in done:
                continue
            cmd = [sys.executable, "-m", "benchmarks.imaml_vs_maml", "--worker", preset, str(k)]
            cmd += ["--repeats", str(repeats)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            done[key] = json.loads(result.stdout.strip().splitlines()[-1])
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(done, indent=2))  # partial results as they come
            print(key, done[key], flush=True)
    return done


def memory_table(done: dict, steps: list[int]) -> str:
    lines = [
        "| inner steps K | MAML peak MiB | iMAML peak MiB | MAML s / meta-step | iMAML s / meta-step |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k in steps:
        m, i = done.get(f"MAML (paper)|{k}"), done.get(f"iMAML|{k}")
        if m is None or i is None:
            continue
        lines.append(
            f"| {k} | {m['peak_mib']:.1f} | {i['peak_mib']:.1f} | {m['seconds']:.3f} | {i['seconds']:.3f} |"
        )
    return "\n".join(lines)


def quality_part(meta_steps: int, seeds: int, val_episodes: int, out: Path) -> str:
    summaries = {}
    for name, preset in PRESETS.items():
        overrides = [
            f"meta_steps={meta_steps}",
            f"meta_test.seeds={seeds}",
            "meta_test.baseline=false",
            "logger.backends=[none]",
            "device=cpu",
        ]
        summaries[name] = run(
            f"configs/{preset}.yaml", overrides, out=out / preset.replace("/", "_"), progress=False
        )
        print(name, summaries[name]["test"], flush=True)
    random = random_init_rung("maml/sine_paper", seeds, val_episodes, "cpu", out)
    series = {f"random init, inner lr {random['lr']:g} tuned on meta-val": random["per_seed"]}
    series.update({n: [s["learned"]["mse"] for s in r["per_seed"]] for n, r in summaries.items()})
    fmt = lambda st: f"{st['mean']:.3f} ± {st['ci95']:.3f}"  # noqa: E731
    lines = [
        "| method | meta-test steps | test MSE | paired change vs MAML | s / meta-step |",
        "|---|---:|---:|---:|---:|",
    ]
    maml = series["MAML (paper)"]
    for name, values in series.items():
        summary = summaries.get(name)
        change = fmt(t_interval([b - a for a, b in zip(maml, values)])) if name == "iMAML" else ""
        per_step = f"{summary['meta_train_seconds'] / meta_steps:.3f}" if summary else ""
        steps = summary["meta_test_steps"] if summary else random["steps"]
        lines.append(f"| {name} | {steps} | {fmt(t_interval(values))} | {change} | {per_step} |")
    n = len(maml)
    lines.append(
        f"\n{n} meta-test episodes, the same for every row; {meta_steps} meta-steps each; ± is "
        f"the 95% t-interval (n − 1 = {n - 1}); a paired interval containing 0 is no "
        "significant difference."
    )
    return "\n".join(lines)


def blocks(rows: list[dict], size: int = 100) -> list[dict]:
    """Mean meta-loss and stationarity residual per block of ``size`` meta-steps."""
    return [
        {
            "steps": f"{i + 1}-{i + len(rows[i : i + size])}",
            "meta_loss": statistics.fmean(r["meta_loss"] for r in rows[i : i + size]),
            "stationarity": statistics.fmean(r["imaml/stationarity"] for r in rows[i : i + size]),
        }
        for i in range(0, len(rows), size)
    ]


def convergence_part(lams: list[float], meta_steps: int, out: Path) -> str:
    results = {}
    quality = out / "imaml_sine" / "metrics.jsonl"  # the quality run: the preset's λ = 2
    if quality.exists():
        records = [json.loads(line) for line in quality.read_text().splitlines()]
        rows = [
            {"meta_loss": r["meta/meta_loss"], "imaml/stationarity": r["imaml/stationarity"]}
            for r in records
            if "imaml/stationarity" in r
        ]
        results["2 (preset)"] = blocks(rows)
    for lam in lams:
        path = out / f"convergence_lam{lam:g}.json"
        if not path.exists():
            overrides = ["device=cpu", "logger.backends=[none]", f"estimator.lam={lam}"]
            exp = build(configlib.load("configs/imaml/sine.yaml", overrides))
            rows = [meta_step(exp.trainer.ctx, exp.trainer.estimator) for _ in range(meta_steps)]
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(blocks(rows), indent=2))
        results[f"{lam:g}"] = json.loads(path.read_text())
    lines = [
        "| λ | meta-steps | meta-train query MSE | stationarity residual |",
        "|---|---|---:|---:|",
    ]
    for lam, rows in results.items():
        for r in rows:
            lines.append(
                f"| {lam} | {r['steps']} | {r['meta_loss']:.3f} | {r['stationarity']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=["all", "quality", "memory", "convergence"], default="all"
    )
    parser.add_argument("--lams", type=float, nargs="+", default=[10.0])
    parser.add_argument("--meta-steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=600)
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="runs/bench_imaml")
    parser.add_argument("--worker", nargs=2, metavar=("PRESET", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats)))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    print(f"machine: {machine(torch.device('cpu'))}\n", flush=True)
    if args.part in ("all", "memory"):
        text = memory_table(memory_part(args.steps, args.repeats, out), args.steps)
        print(text, flush=True)
        (out / "memory.md").write_text(text + "\n")
    if args.part in ("all", "quality"):
        text = quality_part(args.meta_steps, args.seeds, args.val_episodes, out)
        print(text, flush=True)
        (out / "quality.md").write_text(text + "\n")
    if args.part == "convergence":
        text = convergence_part(args.lams, args.meta_steps, out)
        print(text, flush=True)
        (out / "convergence.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
