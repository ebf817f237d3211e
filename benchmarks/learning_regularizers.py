"""The Learning Regularizers protocol (``python -m benchmarks.learning_regularizers``).

1. ``sweep``: scale each teacher's radius to small MLPs. For every teacher (SAM, GSAM,
   GAM over Adam 1e-3) and ρ in a grid, train the MLP-ReLU optimizee for a short budget
   and keep the ρ with the best mean *validation* accuracy (GAM keeps ρ′/ρ = 0.15, GSAM
   ρ_min = ρ_max). Written to ``OUT/sweep.json``.
2. ``train``: meta-train a learned optimizer per rule and teacher (``none`` and the
   swept ``sam``/``gsam``/``gam``) on the MLP-ReLU optimizee family (``configs/lo``
   presets with ``task.activations=[relu]``), 5,000 meta-steps by default, the
   meta-objective on the training batch (``estimator.objective_batch``, ``train`` by
   default: the no-teacher arm minimizes the training loss; the teachers judge the
   training batch). Every run is a resumable run directory ``OUT/<rule>_<teacher>``:
   re-running the same command continues it from its last checkpoint.
3. ``eval``: train optimizees not seen in meta-training from the same initial weights and
   batch order per seed (10 paired seeds) to a *matched training loss* (the full-batch loss
   on 2,048 training examples at or below ``--target-loss``, checked every
   ``--check-every`` steps, at most ``--max-steps``), with each learned optimizer as a
   drop-in ``LearnedOptimizer`` (no teacher at test time), Adam and SAM(Adam) at the swept
   ρ. A run still meta-training is evaluated from its last checkpoint (the report says at
   which meta-step). Rows go to ``OUT/eval.jsonl`` as they finish; re-running skips them.
4. Report: test accuracy, PGA increase raw and net of its first-order term ``r·‖∇L‖``,
   means with 95% t-intervals, and the claim table: teacher LO − no-teacher LO, paired
   over seeds, with 95% t-intervals.

Reference: Sahoo & Krishnan, "Learning Regularizers", arXiv 2510.08968.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy import stats

import learnreg
from learnreg import components
from learnreg import config as configlib
from learnreg.core.inner import InnerState
from learnreg.eval import sharpness
from learnreg.eval.metrics import evaluate_split
from learnreg.experiment import build
from learnreg.optim import GAM, GSAM, SAM, LearnedOptimizer
from learnreg.tracking.checkpoint import load_checkpoint

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "lo"
TEACHERS = ("none", "sam", "gsam", "gam")
RHO_GRID = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
OPTIMIZEES = {
    "MLP-ReLU": {"_component_": "mlp", "hidden": [48], "activation": "relu"},
    "MLP": {"_component_": "mlp", "hidden": [48], "activation": "sigmoid"},
    "CNN": {"_component_": "small_cnn", "channels": [8, 16]},
}


def teacher_optimizer(teacher: str, rho: float):
    """``make(model)`` for the teacher as an explicit optimizer over Adam 1e-3."""
    kinds = {
        "sam": lambda m: SAM(m.parameters(), torch.optim.Adam, rho=rho, lr=1e-3),
        "gsam": lambda m: GSAM(
            m.parameters(), torch.optim.Adam, rho_max=rho, rho_min=rho, alpha=0.1, lr=1e-3
        ),
        "gam": lambda m: GAM(
            m.parameters(), torch.optim.Adam, rho=rho, rho_prime=0.15 * rho, lr=1e-3
        ),
    }
    return kinds[teacher]


def first_order_term(loss: sharpness.SplitLoss, radius: float) -> float:
    """``r·‖∇L(θ)‖``: the PGA increase a linear loss would show at radius ``r``."""
    return radius * sharpness.gradient_norm(loss)


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and 95% t-interval half-width."""
    n = len(values)
    if n < 2:
        return statistics.fmean(values), float("nan")
    return statistics.fmean(values), stats.t.ppf(0.975, n - 1) * statistics.stdev(
        values
    ) / math.sqrt(n)


def fashion_mnist_task():
    cfg = configlib.read_yaml(PRESETS / "mlp_none.yaml")
    return components.instantiate("task", cfg["task"]["datasets"][0])


def train_optimizee(task, arch, seed, make_optimizer, args) -> tuple[torch.nn.Module, int]:
    """Train to the matched training loss (or ``max_steps``); returns the model and steps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10_000 + seed)  # same weights for every optimizer of a seed
        model = components.instantiate(
            "model", arch, input_shape=task.input_shape, out_features=task.out_features
        )
    opt, stream = make_optimizer(model), task.stream("train", 20_000 + seed)
    probe = (task.train.x[:2048], task.train.y[:2048])
    for step in range(1, args.max_steps + 1):
        x, y = stream.next()

        def closure(x=x, y=y):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        if args.target_loss and step % args.check_every == 0:
            with torch.no_grad():
                if F.cross_entropy(model(probe[0]), probe[1]).item() <= args.target_loss:
                    return model, step
    return model, args.max_steps


def metrics_of(model, task, steps: int, args) -> dict:
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    state = InnerState(params, buffers, None)
    out = {
        "steps": steps,
        "test_accuracy": evaluate_split(model, state, task.test, task.kind)["accuracy"],
    }
    out["val_accuracy"] = evaluate_split(model, state, task.val, task.kind)["accuracy"]
    loss = sharpness.SplitLoss(model, params, buffers, task.train, task.kind, args.pga_examples)
    out["train_loss"] = loss.value(loss.theta)
    for r in sharpness.RADII:
        out[f"pga_{r:g}"] = sharpness.pga_loss_increase(loss, r, args.pga_steps)
        out[f"pga_net_{r:g}"] = out[f"pga_{r:g}"] - first_order_term(loss, r)
    return out


def sweep(task, args) -> dict:
    """The ρ with the best mean validation accuracy per teacher; every grid point is cached
    in ``OUT/sweep.json`` as it finishes (a re-run computes only the missing ones)."""
    path = Path(args.out) / "sweep.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    quick = argparse.Namespace(**{**vars(args), "target_loss": 0.0, "max_steps": args.sweep_steps})
    for teacher in TEACHERS[1:]:
        scores = result.setdefault(teacher, {}).setdefault("val_accuracy", {})
        for rho in RHO_GRID:
            if str(rho) in scores:
                continue
            accs = []
            for seed in range(args.sweep_seeds):
                make = teacher_optimizer(teacher, rho)
                model, _ = train_optimizee(task, OPTIMIZEES["MLP-ReLU"], 100 + seed, make, quick)
                params = {k: v.detach() for k, v in model.named_parameters()}
                state = InnerState(params, {}, None)
                accs.append(evaluate_split(model, state, task.val, task.kind)["accuracy"])
            scores[str(rho)] = statistics.fmean(accs)
            print(f"sweep {teacher} rho={rho}: val acc {scores[str(rho)]:.4f}", flush=True)
            result[teacher]["rho"] = float(max(scores, key=scores.get))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
    return result


def overrides(teacher: str, rhos: dict, args) -> list[str]:
    out = [
        f"meta_steps={args.meta_steps}",
        f"estimator.window={args.window}",
        f"estimator.horizon={args.horizon}",
        f"estimator.objective_batch={args.objective_batch}",
        "task.activations=[relu]",
        "meta_test.seeds=1",
        "logger.backends=[]",
        "checkpoint_every=50",
        "device=cpu",
    ]
    if teacher != "none":
        out.append(f"objective.rho={rhos[teacher]['rho']}")
        if teacher == "gam":
            out.append(f"objective.rho_prime={0.15 * rhos[teacher]['rho']}")
    return out


def rule_of(run_dir: Path):
    """``(rule, meta_step)``: the finished run's exported rule, or its last checkpoint's."""
    cfg = configlib.read_yaml(run_dir / "config.yaml")
    if (run_dir / "learned" / "optimizer.json").is_file():
        return str(run_dir), cfg["meta_steps"]
    exp = build(cfg)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    exp.trainer.load_state_dict(state["trainer"])
    return exp.trainer.biases.optimizer, exp.trainer.meta_step


def evaluate(task, runs: dict, rhos: dict, args) -> list[dict]:
    path = Path(args.out) / "eval.jsonl"
    done = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    seen = {(r["optimizee"], r["optimizer"], r["seed"], r["meta_step"]) for r in done}
    table = {"Adam": (lambda m: torch.optim.Adam(m.parameters(), lr=1e-3), 0)}
    table["SAM(Adam)"] = (teacher_optimizer("sam", rhos["sam"]["rho"]), 0)
    for name, run_dir in runs.items():
        rule, meta_step = rule_of(run_dir)
        print(f"LO-{name}: meta-step {meta_step} of {args.meta_steps}", flush=True)
        table[f"LO-{name}"] = (
            lambda m, rule=rule: LearnedOptimizer(m.parameters(), rule),
            meta_step,
        )
    with path.open("a") as sink:
        for seed in range(args.seeds):
            for optimizee in args.optimizees:
                for name, (make, meta_step) in table.items():
                    if (optimizee, name, seed, meta_step) in seen:
                        continue
                    start = time.perf_counter()
                    model, steps = train_optimizee(task, OPTIMIZEES[optimizee], seed, make, args)
                    row = {"optimizee": optimizee, "optimizer": name, "seed": seed}
                    row["meta_step"] = meta_step
                    row |= metrics_of(model, task, steps, args)
                    row["seconds"] = time.perf_counter() - start
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
                    done.append(row)
    return done


def report(rows: list[dict], args) -> str:
    radii = sharpness.RADII
    latest: dict = {}  # a rule evaluated at several meta-steps: report its latest
    for r in rows:
        key = (r["optimizee"], r["optimizer"])
        latest[key] = max(latest.get(key, 0), r["meta_step"])
    by: dict = {}
    for r in rows:
        if r["meta_step"] == latest[(r["optimizee"], r["optimizer"])]:
            by.setdefault(r["optimizee"], {}).setdefault(r["optimizer"], {})[r["seed"]] = r
    lines = [
        f"Matched training loss {args.target_loss} (full-batch, 2,048 training examples; at most "
        f"{args.max_steps} steps), batch 128; mean ± 95% t-interval over paired seeds (n shown).\n",
        "| optimizee | optimizer | meta-steps | n | reached target | mean steps | test acc | "
        + " | ".join(f"PGA r={r:g} (net)" for r in radii)
        + " |",
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(radii),
    ]
    cell = lambda v: "{:.3g} ± {:.2g}".format(*t_interval(v))  # noqa: E731
    for optimizee, opts in by.items():
        for name, seeds in opts.items():
            col = lambda k, seeds=seeds: [s[k] for s in seeds.values()]  # noqa: E731
            pga = [f"{cell(col(f'pga_{r:g}'))} ({cell(col(f'pga_net_{r:g}'))})" for r in radii]
            lines.append(
                f"| {optimizee} | {name} | {latest[(optimizee, name)]} | {len(seeds)} | "
                f"{sum(s < args.max_steps for s in col('steps'))} | "
                f"{statistics.fmean(col('steps')):.0f} | "
                f"{cell(col('test_accuracy'))} | " + " | ".join(pga) + " |"
            )
    lines += [
        "\nClaim table: teacher LO − no-teacher LO of the same rule, paired over seeds, mean ± 95% "
        "t-interval. Flatter = the PGA difference's interval lies below 0; an interval containing "
        "0 is no significant difference.\n",
        "| optimizee | LO | n | Δ test acc | "
        + " | ".join(f"Δ PGA r={r:g} raw / net" for r in radii)
        + " |",
        "|---|---|---:|---:|" + "---:|" * len(radii),
    ]
    for optimizee, opts in by.items():
        for name, seeds in opts.items():
            ref = opts.get(name.rsplit("_", 1)[0] + "_none")
            if not name.startswith("LO-") or name.endswith("_none") or ref is None:
                continue
            common = sorted(set(seeds) & set(ref))
            diff = lambda k, a=seeds, b=ref, c=common: [a[s][k] - b[s][k] for s in c]  # noqa: E731
            d = [f"{cell(diff(f'pga_{r:g}'))} / {cell(diff(f'pga_net_{r:g}'))}" for r in radii]
            lines.append(
                f"| {optimizee} | {name} | {len(common)} | {cell(diff('test_accuracy'))} | "
                + " | ".join(d)
                + " |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", nargs="+", default=["mlp"])
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS))
    parser.add_argument("--stage", choices=["sweep", "train", "eval", "all"], default="all")
    parser.add_argument("--meta-steps", type=int, default=5000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--objective-batch", choices=["train", "val"], default="train")
    parser.add_argument("--sweep-steps", type=int, default=1000)
    parser.add_argument("--sweep-seeds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--optimizees", nargs="+", default=list(OPTIMIZEES))
    parser.add_argument("--target-loss", type=float, default=0.35)
    parser.add_argument("--max-steps", type=int, default=4000)
    parser.add_argument("--check-every", type=int, default=25)
    parser.add_argument("--pga-steps", type=int, default=20)
    parser.add_argument("--pga-examples", type=int, default=1024)
    parser.add_argument("--out", default="runs/bench_lo")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task = fashion_mnist_task()
    rhos = sweep(task, args)
    if args.stage == "sweep":
        return
    runs = {f"{r}_{t}": Path(args.out) / f"{r}_{t}" for r in args.rules for t in args.teachers}
    if args.stage in ("train", "all"):
        for name, out in runs.items():
            start = time.perf_counter()
            teacher = name.split("_", 1)[1]
            learnreg.run(
                PRESETS / f"{name}.yaml", overrides(teacher, rhos, args), out=out, progress=False
            )
            print(f"meta-trained {name} in {time.perf_counter() - start:.0f}s -> {out}", flush=True)
    if args.stage == "train":
        return
    text = report(evaluate(task, runs, rhos, args), args)
    print(text)
    (Path(args.out) / "results.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
