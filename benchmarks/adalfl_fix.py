"""AdaLFL before and after the loss-network fix (issue 15), per seed, against CE.

``before`` is the old network (Softplus output, classes summed: the overrides
``loss.output=softplus loss.aggregation=sum``); ``after`` is the preset as it ships
(linear output, classes averaged). Each seed is a whole run (offline warm-up, online
meta-test) whose cross-entropy baseline shares the model initialization and batch order,
so ``before`` and ``after`` of one seed have the same CE number. Resumable: a finished
run directory returns its summary, an interrupted one resumes from its checkpoint; the
table is rebuilt from whatever has finished.

    python -m benchmarks.adalfl_fix --preset adalfl/digits_mlp --variant after \\
        --seeds 10 --out /work/bench_runs/lossfid
    python -m benchmarks.adalfl_fix --preset adalfl/digits_mlp --table --out ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import learnreg
from benchmarks.common import machine

VARIANTS = {"before": ["loss.output=softplus", "loss.aggregation=sum"], "after": []}


def run_dir(root: Path, preset: str, variant: str, seed: int) -> Path:
    return root / preset.replace("/", "-") / variant / f"seed{seed}"


def run(preset: str, variant: str, seeds: int, root: Path) -> None:
    for seed in range(seeds):
        learnreg.run(
            f"configs/{preset}.yaml",
            [f"seed={seed}", "logger.backends=[]", *VARIANTS[variant]],
            run_dir(root, preset, variant, seed),
            progress=False,
        )


def table(preset: str, seeds: int, root: Path) -> str:
    rows, cols = [], {"before": [], "after": [], "ce": []}
    for seed in range(seeds):
        cells, ce = [], None
        for variant in VARIANTS:
            path = run_dir(root, preset, variant, seed) / "summary.json"
            if not path.exists():
                cells.append("–")
                continue
            summary = json.loads(path.read_text())
            cells.append(f"{100 * summary['test']['error']:.2f}%")
            cols[variant].append(summary["test"]["error"])
            ce = summary["baseline"]["test"]["error"]
        if ce is not None:
            cols["ce"].append(ce)
        rows.append(
            f"| {seed} | {' | '.join(cells)} | {'–' if ce is None else f'{100 * ce:.2f}%'} |"
        )

    def mean(values: list[float]) -> str:
        if not values:
            return "–"
        std = statistics.stdev(values) if len(values) > 1 else float("nan")
        return f"{100 * statistics.mean(values):.2f}% ± {100 * std:.2f} (n={len(values)})"

    return "\n".join(
        [
            f"machine: {machine()}",
            "",
            "| seed | before (Softplus, sum) | after (linear, mean) | CE, same settings |",
            "|---:|---|---|---|",
            *rows,
            f"| mean ± std | {mean(cols['before'])} | {mean(cols['after'])} | {mean(cols['ce'])} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="adalfl/digits_mlp")
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--out", required=True, help="root of the run directories")
    parser.add_argument("--table", action="store_true", help="print the per-seed table")
    args = parser.parse_args()
    if args.variant:
        run(args.preset, args.variant, args.seeds, Path(args.out))
    if args.table:
        print(table(args.preset, args.seeds, Path(args.out)))


if __name__ == "__main__":
    main()
