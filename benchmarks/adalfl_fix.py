"""AdaLFL before and after the loss-network fix (issue 15), per seed, against CE.

``before`` is the old network (Softplus output, classes summed: the overrides
``loss.output=softplus loss.aggregation=sum``); ``after`` is the preset as it ships
(linear output, classes averaged). Each seed is a whole run (offline warm-up, online
meta-test) whose cross-entropy baseline shares the model initialization and batch order,
so ``before`` and ``after`` of one seed have the same CE number. Resumable: a finished
run directory returns its summary, an interrupted one resumes from its checkpoint; the
table is rebuilt from whatever has finished. Started twice, the command runs two seeds at a
time (a seed another process holds is skipped).

    python -m benchmarks.adalfl_fix --preset adalfl/digits_mlp --variant after \\
        --seeds 10 --out /work/bench_runs/lossfid
    python -m benchmarks.adalfl_fix --preset adalfl/digits_mlp --table --out ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import scipy.stats

import learnreg
from benchmarks.common import machine
from learnreg import losses
from learnreg.errors import RunLockedError
from learnreg.eval.dead_loss import is_dead, loss_slopes

VARIANTS = {"before": ["loss.output=softplus", "loss.aggregation=sum"], "after": []}
# ``--same-settings-only``: the run keeps its same-settings baseline (the table's CE column)
# and skips the tuned grid and the learned-lr control, which do not depend on the loss
# network and so are the same for ``before`` and ``after`` of a seed.
SAME_SETTINGS_ONLY = ["baseline.tune.enabled=false", "baseline.controls=[]"]


def run_dir(root: Path, preset: str, variant: str, seed: int) -> Path:
    return root / preset.replace("/", "-") / variant / f"seed{seed}"


def run(preset: str, variant: str, seeds: int, root: Path, same_only: bool = False) -> None:
    """Every seed's run; a seed another process is running is left to it, so starting
    the same command twice runs two seeds at a time."""
    extra = SAME_SETTINGS_ONLY if same_only else []
    for seed in range(seeds):
        try:
            learnreg.run(
                f"configs/{preset}.yaml",
                [f"seed={seed}", "logger.backends=[]", *VARIANTS[variant], *extra],
                run_dir(root, preset, variant, seed),
                progress=False,
            )
        except RunLockedError:
            print(f"seed {seed}: another process is running it; next seed", flush=True)


def dead_or_ok(directory: Path, names: tuple[str, ...], classes: int) -> str:
    """The dead-loss monitor's verdict on an exported loss (the first of ``names`` found)."""
    for name in names:
        if (directory / "learned" / f"{name}.json").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slopes = loss_slopes(losses.load(directory / "learned" / name), classes)
            return "dead" if is_dead(slopes) else "ok"
    return "?"


def paired(a: list[float], b: list[float]) -> str:
    """Mean paired difference a - b (percentage points) with a t-based 95% CI."""
    diffs = [100 * (x - y) for x, y in zip(a, b)]
    if len(diffs) < 2:
        return f"n={len(diffs)}: too few pairs for a CI"
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
    verdict = "no significant difference" if mean - half <= 0 <= mean + half else "significant"
    return f"{mean:+.2f} pp [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(diffs)}, {verdict})"


def table(preset: str, seeds: int, root: Path) -> str:
    rows, results = [], {}  # results[seed] = {"before": err, "after": err, "ce": err}
    for seed in range(seeds):
        cells, found = [], {}
        for variant in VARIANTS:
            directory = run_dir(root, preset, variant, seed)
            if not (directory / "summary.json").exists():
                cells.append("–")
                continue
            summary = json.loads((directory / "summary.json").read_text())
            found[variant] = summary["test"]["error"]
            # protocol runs alias `baseline` to the tuned one: the column is same settings
            same = summary.get("baselines", {}).get("same_settings", summary["baseline"])
            ce = same["test"]["error"]
            # same seed, same model init and batches: the CE runs of both variants agree
            if found.setdefault("ce", ce) != ce:
                raise RuntimeError(f"seed {seed}: the CE baselines of before and after differ")
            # run directories from before the export rename call the offline loss "loss"
            offline = dead_or_ok(directory, ("loss_offline", "loss"), 10)
            online = dead_or_ok(directory, ("loss_online_seed0",), 10)
            cells.append(f"{100 * found[variant]:.2f}% ({offline}/{online})")
        ce = f"{100 * found['ce']:.2f}%" if "ce" in found else "–"
        rows.append(f"| {seed} | {' | '.join(cells)} | {ce} |")
        results[seed] = found

    def mean(variant: str) -> str:
        values = [r[variant] for r in results.values() if variant in r]
        if not values:
            return "–"
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{100 * statistics.mean(values):.2f}% ± {100 * std:.2f} (n={len(values)})"

    def pairs(a: str, b: str) -> str:
        both = [r for r in results.values() if a in r and b in r]
        return paired([r[a] for r in both], [r[b] for r in both])

    return "\n".join(
        [
            f"machine: {machine()}",
            "",
            "| seed | before (Softplus, sum) | after (linear, mean) | CE, same settings |",
            "|---:|---|---|---|",
            *rows,
            f"| mean ± std | {mean('before')} | {mean('after')} | {mean('ce')} |",
            "",
            "(offline/online): the dead-loss test on the loss at the end of the offline warm-up"
            " and at the end of the online meta-test run.",
            f"after - before: {pairs('after', 'before')}",
            f"after - CE:     {pairs('after', 'ce')}",
            f"before - CE:    {pairs('before', 'ce')}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="adalfl/digits_mlp")
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", required=True, help="root of the run directories")
    parser.add_argument("--table", action="store_true", help="print the per-seed table")
    parser.add_argument(
        "--same-settings-only",
        action="store_true",
        help="skip the tuned grid and the learned-lr control (the table needs neither)",
    )
    args = parser.parse_args()
    if args.variant:
        run(args.preset, args.variant, args.seeds, Path(args.out), args.same_settings_only)
    if args.table:
        print(table(args.preset, args.seeds, Path(args.out)))


if __name__ == "__main__":
    main()
