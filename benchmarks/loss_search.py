"""Loss search quality and cost: TaylorGLO and EvoMAL against cross-entropy / MSE, the
TaylorGLO invariant's saving, and EvoMAL against GP without local search.

Every experiment is a ``learnreg.run`` of a preset with a reduced budget (stated in the
table) into ``--out/<name>``; finished runs are reused, so the script can be stopped and
re-run. Reported:

* ``quality``: under the comparison protocol (README "Honest comparisons"): one search,
  then 10 meta-test seeds: fresh models trained with the searched loss and, from the same
  initializations and batch order, the task loss at the preset's lr ("same settings"),
  at the lr its validation split prefers from the grid ("tuned"), and the learned-lr
  control (CMA-ES over the step size with the search's own budget). Means with
  Student-t 95% intervals, and searched minus each baseline paired by seed (n counts
  meta-test seeds of one search: the spread between searches is not in it);
* ``invariant``: TaylorGLO with the trainability filter on and off (3 search seeds):
  trained fitness evaluations until the best fitness first reaches cross-entropy's own
  fitness (the same partial training with cross-entropy);
* ``ablation``: best validation fitness per generation, EvoMAL vs GP-LFL (no local search);
* ``cost``: a few generations at the papers' full settings, timed and extrapolated to a
  25 x 50 search.

Run: ``python -m benchmarks.loss_search [--only quality,invariant,ablation,cost]
[--tasks digits,fmnist,diabetes] [--rows taylorglo_diabetes,...] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import learnreg
from benchmarks._loss_search_budgets import COST, QUALITY
from benchmarks.common import paired_cell
from learnreg import config as configlib
from learnreg.eval import stats
from learnreg.experiment import build

SEEDS = 10
BASELINES = ("same_settings", "tuned", "learned_lr")
COMMON = [
    f"meta_test.seeds={SEEDS}",
    "meta_test.eval_every=1000",
    "logger.backends=[none]",
    "device=cpu",
]


def run(name: str, preset: str, overrides: list[str], out: Path) -> dict:
    # the rows of one task share their tuned grid (same task, model, rate and budget)
    return learnreg.run(
        f"configs/{preset}.yaml",
        overrides + COMMON,
        out=out / name,
        progress=False,
        tune_cache=out / "tuning_cache",
    )


def history(out: Path, name: str) -> list[dict]:
    return json.loads((out / name / "learned" / "search_history.json").read_text())["generations"]


def _cell(block: dict, metric: str, digits: int) -> str:
    return stats.format_mean(
        {
            "mean": block["test"][metric],
            "ci95": block["test_ci95"][metric],
            "n": block["n"],
        },
        digits,
    )


QUALITY_HEADER = (
    "| task | method | budget | n | searched loss | task loss, same settings | task loss, tuned lr "
    "| learned-lr control | tuned lr / control lr | searched − same settings | searched − tuned "
    "| searched − control | search wall time |\n|---|---|---|---:|---|---|---|---|---|---|---|---|---:|"
)


def quality_row(name: str, budget: str, summary: dict) -> str:
    """One row of the quality table from a finished run's summary.json."""
    metric = "error" if "error" in summary["test"] else "mse"
    digits = 4
    baseline = "MSE" if metric == "mse" else "CE"
    blocks = summary["baselines"]
    cells = [
        f"{summary['task']} ({metric})",
        f"{name.split('_')[0]} vs {baseline}",
        budget,
        str(summary["n"]),
        _cell(summary, metric, digits),
        *(_cell(blocks[b], metric, digits) for b in BASELINES),
        f"{blocks['tuned']['settings']['lr']:.3g} / "
        f"{blocks['learned_lr']['settings']['meta_learned_lr']:.3g}",
        *(paired_cell(summary["paired"][b][metric], digits=digits) for b in BASELINES),
        f"{summary['meta_train_seconds'] / 60:.1f} min",
    ]
    return "| " + " | ".join(cells) + " |"


def quality(out: Path, tasks: list[str], names: list[str] | None = None) -> None:
    """Run (or read back) the quality rows of ``tasks``, only those in ``names`` if given:
    two processes given different ``names`` share the machine's cores; a row another
    process finished is read back into quality.md."""
    print("\n" + QUALITY_HEADER)
    rows = []
    for name, (preset, overrides, budget) in QUALITY.items():
        finished = out / name / "summary.json"
        if name.split("_")[1] in tasks and (names is None or name in names):
            summary = run(name, preset, overrides, out)
        elif finished.is_file():  # another task's finished row stays in quality.md
            summary = json.loads(finished.read_text())
        else:
            continue
        rows.append(quality_row(name, budget, summary))
        print(rows[-1], flush=True)
        (out / "quality.md").write_text(QUALITY_HEADER + "\n" + "\n".join(rows) + "\n")


def ce_fitness(preset: str, overrides: list[str]) -> float:
    """Cross-entropy's own fitness: the search's partial training, with CE as the loss."""
    from learnreg.estimators.evaluators import evaluate_group
    from learnreg.losses import CrossEntropy

    cfg = configlib.load(f"configs/{preset}.yaml", overrides + COMMON)
    trainer = build(cfg).trainer
    estimator = trainer.estimator
    estimator._bind(trainer.ctx)
    return evaluate_group(estimator.problem, [CrossEntropy()], batched=False)[0].fitness


def invariant(out: Path) -> None:
    preset = "taylorglo/digits_mlp"
    base = [
        "estimator.searcher.population=20",
        "meta_steps=20",
        "estimator.fitness_steps=500",
        "meta_test.steps=10",
        "baseline.tune.enabled=false",  # fitness counts only: no test-metric comparison here
        "baseline.controls=[]",
    ]
    target = ce_fitness(preset, base)
    print(
        f"\nTaylorGLO on digits, CMA-ES 20 x 20 gens, fitness 500 steps; target = cross-entropy's fitness {target:.4f}"
    )
    print(
        "\n| invariant | search seed | trained evaluations to reach the target | best fitness | trained evaluations in all | search wall time |"
    )
    print("|---|---|---|---|---|---|")
    for on in (True, False):
        for seed in (0, 1, 2):
            name = f"invariant_{'on' if on else 'off'}_seed{seed}"
            filters = "[taylor_invariant]" if on else "[]"
            summary = run(
                name, preset, base + [f"estimator.filters={filters}", f"seed={seed}"], out
            )
            records = history(out, name)
            reached = next(
                (
                    r["search/total_evaluated"]
                    for r in records
                    if (r["search/best_fitness"] or math.inf) <= target
                ),
                None,
            )
            print(
                f"| {'on' if on else 'off'} | {seed} | {int(reached) if reached is not None else 'not reached'} | "
                f"{records[-1]['search/best_fitness']:.4f} | {int(records[-1]['search/total_evaluated'])} | "
                f"{summary['meta_train_seconds'] / 60:.1f} min |",
                flush=True,
            )


def ablation(out: Path, tasks: list[str]) -> None:
    for task in (t for t in ("digits", "diabetes") if t in tasks):
        evomal, gplfl = history(out, f"evomal_{task}"), history(out, f"gplfl_{task}")
        print(f"\n{task}: best validation fitness so far, per generation (lower is better)\n")
        print("| generation | " + " | ".join(str(r["generation"]) for r in evomal) + " |")
        print("|---|" + "---|" * len(evomal))
        for label, records in (("EvoMAL", evomal), ("GP-LFL", gplfl)):
            cells = [
                f"{r['search/best_fitness']:.4f}" if r["search/best_fitness"] is not None else "-"
                for r in records
            ]
            print(f"| {label} | " + " | ".join(cells) + " |")


def cost() -> None:
    print(
        "\n| search | generations timed | seconds per generation (median) | trained evaluations per generation | extrapolated 50 generations |"
    )
    print("|---|---|---|---|---|")
    for title, (preset, overrides, generations) in COST.items():
        cfg = configlib.load(f"configs/{preset}.yaml", overrides + COMMON)
        trainer = build(cfg).trainer
        times = []
        for g in range(1, generations + 1):
            start = time.perf_counter()
            trainer.fit(g, progress=False)
            times.append(time.perf_counter() - start)
        evaluated = statistics.mean(r["search/evaluated"] for r in trainer.estimator.history)
        total = sum(times) if generations == 50 else statistics.median(times) * 50
        print(
            f"| {title} | {generations} | {statistics.median(times):.1f} | {evaluated:.1f} | "
            f"{total / 60:.1f} min{' (measured)' if generations == 50 else ''} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="quality,invariant,ablation,cost")
    parser.add_argument("--out", default="runs/bench_loss_search")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--tasks", default="digits,fmnist,diabetes", help="quality and ablation rows to run"
    )
    parser.add_argument(
        "--rows",
        default=None,
        help=f"only these quality rows, comma-separated (of {', '.join(QUALITY)})",
    )
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU")
    parts = args.only.split(",")
    if "quality" in parts:
        unknown = set(args.rows.split(",")) - set(QUALITY) if args.rows else set()
        if unknown:
            parser.error(f"unknown --rows {sorted(unknown)}; choose from {', '.join(QUALITY)}")
        quality(out, tasks, args.rows.split(",") if args.rows else None)
    if "invariant" in parts:
        invariant(out)
    if "ablation" in parts:
        ablation(out, tasks)
    if "cost" in parts:
        cost()


if __name__ == "__main__":
    main()
