"""AdaLFL and ML3 against the task loss under the comparison protocol, paired seeds.

Each seed is a whole run of the preset (meta-training included, so its randomness
counts) with one meta-test seed. Every run also trains, from the same model
initialization and in the same batch order: the task loss (CE or MSE) at the preset's
learning rate ("same settings"), the task loss at the learning rate its validation
split prefers from the grid of :mod:`learnreg.eval.baselines` ("tuned"), and the
learned-lr control (the task loss with a meta-learned step size, same estimator and
budget). The table gives means with Student-t 95% intervals over the seeds finished so
far, and learned minus each baseline paired by seed (mean, t-interval, paired t-test
p-value, verdict). The update-size ratio ‖Δθ learned‖ / ‖Δθ same settings‖ at the first
and last evaluation replaces the old gradient-scale ratio.

Resumable: finished runs are read back, so re-running the command continues where it
stopped; ``--table`` prints the table of what exists without running anything.

The presets of one task share their tuned grid (same task, model, SGD rate, budget and
seeds): the runs keep it in ``OUT/tuning_cache`` (``learnreg run --tune-cache``), so the
second preset of a seed reads the grid the first one trained. A finished run that predates
the cache contributes its grid from its checkpoint (:func:`fill_cache_from_run`).

    python -m benchmarks.loss_learning [--seeds 10] [--only-seeds 3 4] [--presets ml3/digits_mlp ...] --out DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import learnreg
from benchmarks.common import machine, paired_cell
from learnreg import config as configlib
from learnreg.eval import stats
from learnreg.experiment import build
from learnreg.tracking.checkpoint import load_checkpoint

PRESETS = [
    "ml3/digits_mlp",
    "adalfl/digits_mlp",
    "ml3/diabetes_mlp",
    "adalfl/diabetes_mlp",
    "ml3/fmnist_cnn",
    "adalfl/fmnist_cnn",
]
BASELINES = ("same_settings", "tuned", "learned_lr")


def update_ratio_trend(run_dir: Path) -> tuple[float, float] | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ratios = [r["meta_test/update_ratio"] for r in rows if "meta_test/update_ratio" in r]
    return (ratios[0], ratios[-1]) if ratios else None


def run_dir(root: Path, preset: str, seed: int) -> Path:
    return root / preset.replace("/", "-") / f"seed{seed}"


def run_seed(preset: str, seed: int, root: Path, overrides: list[str]) -> dict:
    return learnreg.run(
        f"configs/{preset}.yaml",
        [f"seed={seed}", "meta_test.seeds=1", "logger.backends=[]", *overrides],
        run_dir(root, preset, seed),
        progress=False,
        tune_cache=root / "tuning_cache",
    )


def fill_cache_from_run(directory: Path, cache_root: Path) -> int:
    """Store a finished run's tuned grid (from its checkpoint) in the cache; the number
    of seeds stored (0 without a checkpoint or a tuned grid)."""
    checkpoint = directory / "checkpoints" / "last.pt"
    if not (checkpoint.is_file() and (directory / "summary.json").is_file()):
        return 0
    tuned = load_checkpoint(checkpoint)["run"].get("tuning", {}).get("tuned")
    if not tuned:
        return 0
    cache = build(configlib.load(configlib.read_yaml(directory / "config.yaml"))).tuning_cache(
        cache_root
    )
    stored = 0
    for index, row in enumerate(tuned["seeds"]):
        if cache.lookup("tuned", index, tuned["lrs"]) is None:
            cache.store("tuned", index, tuned["lrs"], row, str(directory))
            stored += 1
    return stored


def finished(root: Path, preset: str) -> list[tuple[Path, dict]]:
    out = []
    for path in sorted((root / preset.replace("/", "-")).glob("seed*/summary.json")):
        out.append((path.parent, json.loads(path.read_text())))
    return sorted(out, key=lambda t: t[1]["seed"])


def _mean(values: list[float], scale: float) -> str:
    s = stats.summarize([v * scale for v in values])
    return stats.format_mean(s, 2 if scale == 100 else 3)


def table_row(preset: str, runs: list[tuple[Path, dict]]) -> str:
    metric = "error" if "error" in runs[0][1]["test"] else "mse"
    scale = 100 if metric == "error" else 1
    learned = [float(s["test"][metric]) for _, s in runs]  # float(): "nan" in summary.json
    cells = [preset, f"test {metric}" + (" (%)" if scale == 100 else ""), str(len(runs))]
    cells.append(_mean(learned, scale))
    verdicts = []
    for name in BASELINES:
        base = [float(s["baselines"][name]["test"][metric]) for _, s in runs]
        cells.append(_mean(base, scale))
        verdicts.append(paired_cell(stats.paired(learned, base, metric), scale))
    lrs = [s["baselines"]["tuned"]["settings"]["lr"] for _, s in runs]
    control = [s["baselines"]["learned_lr"]["settings"]["meta_learned_lr"] for _, s in runs]
    cells.append(f"{statistics.median(lrs):.3g} / {statistics.median(control):.3g}")
    cells += verdicts
    trends = [t for t in (update_ratio_trend(d) for d, _ in runs) if t]
    cells.append(
        f"{statistics.mean(t[0] for t in trends):.2f} → {statistics.mean(t[1] for t in trends):.2f}"
        if trends
        else ""
    )
    minutes = [
        (s["meta_train_seconds"] + s["meta_test_seconds"] + s.get("tune_seconds", 0.0)) / 60
        + s.get("controls_seconds", 0.0) / 60
        for _, s in runs
    ]
    cells.append(f"{statistics.mean(minutes):.0f}")
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| preset | metric | n | learned | task loss, same settings | task loss, tuned lr | "
    "learned-lr control | tuned lr / control lr (median) | learned − same settings | "
    "learned − tuned | learned − control | update ratio (first → last eval) | min/seed |\n"
    "|---|---|---:|---|---|---|---|---|---|---|---|---|---:|"
)


def print_table(root: Path, presets: list[str]) -> None:
    print(f"machine: {machine()}\n")
    print(HEADER)
    for preset in presets:
        runs = finished(root, preset)
        if runs:
            print(table_row(preset, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--only-seeds",
        type=int,
        nargs="*",
        help="run these of the seeds only (two processes on different seeds share one --out)",
    )
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--out", required=True, help="run directories (re-runs resume here)")
    parser.add_argument("--table", action="store_true", help="only print what is finished")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every preset")
    args = parser.parse_args()
    root = Path(args.out)
    if not args.table:
        for directory in sorted(root.glob("*/seed*")):
            fill_cache_from_run(directory, root / "tuning_cache")
        chosen = args.only_seeds if args.only_seeds is not None else range(args.seeds)
        for seed in chosen:  # seed-major: every preset's partial n grows together
            for preset in args.presets:
                run_seed(preset, seed, root, args.overrides)
                (root / "table.md").write_text(_table_text(root, args.presets))
    print_table(root, args.presets)


def _table_text(root: Path, presets: list[str]) -> str:
    rows = [table_row(p, runs) for p in presets if (runs := finished(root, p))]
    return HEADER + "\n" + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
