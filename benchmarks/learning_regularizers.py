"""The Learning Regularizers protocol at CPU scale (``python -m benchmarks.learning_regularizers``).

1. Meta-train a learned optimizer per rule (``lstm``, ``mlp``) and teacher (``none``,
   ``sam``, ``gsam``, ``gam``) with the ``configs/lo`` presets on real Fashion-MNIST
   (MLPs of widths 20/32, sigmoid/ReLU), each run in its own directory (re-running
   resumes or reuses it).
2. Train optimizees *not seen in meta-training* from scratch, as plain PyTorch loops
   with the drop-in optimizers: ``LearnedOptimizer.from_run(run)`` for each learned
   optimizer (no teacher at test time), ``torch.optim.Adam`` and ``SAM(Adam)``. The
   optimizees: MLP (sigmoid, 48 units), MLP-ReLU (48 units), CNN (two conv layers); the
   same initial weights and batch order for every optimizer of a seed.
3. Report test accuracy and the PGA loss increase of the training loss at radii
   0.001, 0.005, 0.05, 0.1 (mean ± std over seeds), as a markdown table, and whether each
   teacher's LO is flatter than the unregularized LO at every radius with test accuracy
   no worse.

Reference: Sahoo & Krishnan, "Learning Regularizers", arXiv 2510.08968.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import learnreg
from learnreg import components
from learnreg import config as configlib
from learnreg.core.inner import InnerState
from learnreg.eval import sharpness
from learnreg.eval.metrics import evaluate_split
from learnreg.optim import SAM, LearnedOptimizer

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "lo"
TEACHERS = ("none", "sam", "gsam", "gam")
OPTIMIZEES = {
    "MLP": {"_component_": "mlp", "hidden": [48], "activation": "sigmoid"},
    "MLP-ReLU": {"_component_": "mlp", "hidden": [48], "activation": "relu"},
    "CNN": {"_component_": "small_cnn", "channels": [8, 16]},
}


def meta_train(rule: str, teacher: str, args) -> Path:
    out = Path(args.out) / f"{rule}_{teacher}"
    overrides = [
        f"meta_steps={args.meta_steps}",
        f"estimator.window={args.window}",
        f"estimator.horizon={args.steps}",
        f"meta_test.steps={args.steps}",
        "meta_test.seeds=1",
        "logger.backends=[]",
    ]
    start = time.perf_counter()
    learnreg.run(PRESETS / f"{rule}_{teacher}.yaml", overrides, out=out, progress=False)
    print(
        f"meta-trained {rule}/{teacher} in {time.perf_counter() - start:.0f}s -> {out}", flush=True
    )
    return out


def fashion_mnist_task():
    """The presets' Fashion-MNIST task (the same subsets as meta-training)."""
    cfg = configlib.read_yaml(PRESETS / "lstm_none.yaml")
    return components.instantiate("task", cfg["task"]["datasets"][0])


def train_optimizee(task, arch: dict, seed: int, make_optimizer, steps: int):
    """Train one optimizee with a torch.optim optimizer; returns the model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)  # same weights for every optimizer of a seed
        model = components.instantiate(
            "model", arch, input_shape=task.input_shape, out_features=task.out_features
        )
    opt = make_optimizer(model)
    stream = task.stream("train", 20_000 + seed)
    for _ in range(steps):
        x, y = stream.next()

        def closure(x=x, y=y):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return model


def metrics_of(model, task, args) -> dict:
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    out = {
        "test_accuracy": evaluate_split(
            model, InnerState(params, buffers, None), task.test, task.kind
        )["accuracy"]
    }
    loss = sharpness.SplitLoss(model, params, buffers, task.train, task.kind, args.pga_examples)
    for radius in sharpness.RADII:
        out[f"pga_{radius:g}"] = sharpness.pga_loss_increase(loss, radius, args.pga_steps)
    return out


def optimizers(runs: dict[str, Path]) -> dict:
    table = {
        "Adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
        "SAM(Adam)": lambda m: SAM(m.parameters(), torch.optim.Adam, rho=0.05, lr=1e-3),
    }
    for name, run in runs.items():
        table[f"LO-{name}"] = lambda m, run=run: LearnedOptimizer.from_run(run, m.parameters())
    return table


def summarize(rows: list[dict]) -> dict:
    return {
        k: (
            statistics.mean(r[k] for r in rows),
            statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0,
        )
        for k in rows[0]
    }


def report(results: dict, args) -> str:
    keys = ["test_accuracy"] + [f"pga_{r:g}" for r in sharpness.RADII]
    lines = [
        f"Fashion-MNIST (train subset 10000, test 2000), {args.steps} steps, batch 128, "
        f"{args.seeds} seeds; meta-training {args.meta_steps} meta-steps of window {args.window}.\n",
        "| optimizee | optimizer | test acc | "
        + " | ".join(f"PGA r={r:g}" for r in sharpness.RADII)
        + " |",
        "|---|---|---:|" + "---:|" * len(sharpness.RADII),
    ]
    for optimizee, per_opt in results.items():
        for name, stats in per_opt.items():
            cells = [
                f"{stats[k][0]:.4f} ± {stats[k][1]:.4f}"
                if k == "test_accuracy"
                else f"{stats[k][0]:.3g} ± {stats[k][1]:.2g}"
                for k in keys
            ]
            lines.append(f"| {optimizee} | {name} | " + " | ".join(cells) + " |")
    lines.append(
        "\nClaim check (teacher LO vs the same rule without a teacher): flatter = lower "
        "mean PGA increase at every radius; accuracy no worse = mean test accuracy >= .\n"
    )
    lines.append("| optimizee | LO | flatter at all radii | radii flatter | acc no worse |")
    lines.append("|---|---|---|---:|---|")
    for optimizee, per_opt in results.items():
        for name, stats in per_opt.items():
            if not name.startswith("LO-") or name.endswith("_none"):
                continue
            ref = per_opt.get(name.rsplit("_", 1)[0] + "_none")
            if ref is None:
                continue
            flatter = [stats[f"pga_{r:g}"][0] < ref[f"pga_{r:g}"][0] for r in sharpness.RADII]
            acc = stats["test_accuracy"][0] >= ref["test_accuracy"][0]
            lines.append(
                f"| {optimizee} | {name} | {'yes' if all(flatter) else 'no'} | "
                f"{sum(flatter)}/{len(flatter)} | {'yes' if acc else 'no'} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", nargs="+", default=["mlp", "lstm"])
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS))
    parser.add_argument("--stage", choices=["train", "eval", "all"], default="all")
    parser.add_argument("--meta-steps", type=int, default=150)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="inner steps (horizon and test)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--optimizees", nargs="+", default=list(OPTIMIZEES))
    parser.add_argument("--pga-steps", type=int, default=20)
    parser.add_argument("--pga-examples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/bench_lo")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {}
    for rule in args.rules:
        for teacher in args.teachers:
            if args.stage == "eval":
                runs[f"{rule}_{teacher}"] = Path(args.out) / f"{rule}_{teacher}"
            else:
                runs[f"{rule}_{teacher}"] = meta_train(rule, teacher, args)
    if args.stage == "train":
        return
    task = fashion_mnist_task()
    results: dict = {}
    for optimizee in args.optimizees:
        per_opt: dict = {}
        for name, make in optimizers(runs).items():
            rows = []
            start = time.perf_counter()
            for seed in range(args.seeds):
                model = train_optimizee(task, OPTIMIZEES[optimizee], seed, make, args.steps)
                rows.append(metrics_of(model, task, args))
            per_opt[name] = summarize(rows)
            print(
                f"{optimizee} {name}: acc {per_opt[name]['test_accuracy'][0]:.4f} "
                f"({time.perf_counter() - start:.0f}s)",
                flush=True,
            )
        results[optimizee] = per_opt
    text = report(results, args)
    print(text)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
