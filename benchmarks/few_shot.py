"""The NPBML ablation ladder and its baselines on few-shot episodes, 600 test episodes.

Each rung is a preset run through ``learnreg.run`` (so every figure can be reproduced
with ``learnreg run PRESET meta_steps=N``); the runs land in ``runs/bench_few_shot/`` and
a finished run is read back instead of being re-run.

Run: ``python -m benchmarks.few_shot [--settings sine fmnist_5w1s fmnist_5w5s]
[--sine-steps 2000] [--image-steps 300] [--seeds 600] [--device cuda]``. Prints one markdown table per
setting: test accuracy (or MSE) mean ± 95% CI over the meta-test episodes, for the learned
biases and for training from a random init with the same inner optimizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import add_device_argument, device_of, machine
from learnreg.eval.metrics import summarize
from learnreg.runner import run

RUNGS = [
    ("MAML", "maml/{s}"),
    ("+ learned loss", "npbml/ablation/{s}_1_learned_loss"),
    ("+ preconditioner", "npbml/ablation/{s}_2_preconditioner"),
    ("+ FiLM (= NPBML)", "npbml/{s}"),
    ("Meta-SGD", "metasgd/{s}"),
]
TITLES = {
    "sine": "Sine regression, 10-shot (test MSE, lower is better)",
    "fmnist_5w1s": "Fashion-MNIST 5-way 1-shot, meta-test classes unseen (test accuracy)",
    "fmnist_5w5s": "Fashion-MNIST 5-way 5-shot, meta-test classes unseen (test accuracy)",
    "digits_5w1s": "digits 5-way 1-shot, meta-test classes unseen (test accuracy)",
}


def run_setting(
    setting: str, steps: int, seeds: int, out: Path, device: str = "cpu"
) -> list[tuple[str, dict]]:
    results = []
    for i, (name, preset) in enumerate(RUNGS):
        preset = preset.format(s=setting)
        overrides = [
            f"meta_steps={steps}",
            f"meta_test.seeds={seeds}",
            # the random-init baseline is the same for every rung: meta-test it once
            f"meta_test.baseline={'true' if i == 0 else 'false'}",
            "logger.backends=[none]",
            f"device={device}",
        ]
        summary = run(
            f"configs/{preset}.yaml", overrides, out=out / preset.replace("/", "_"), progress=False
        )
        results.append((name, summary))
        metric = "mse" if setting == "sine" else "accuracy"
        print(  # one line per finished rung, so a cut-off ladder still reports its rungs
            f"{preset}: test {metric} {summary['test'][metric]:.4f} ± "
            f"{summary['test_ci95'][metric]:.4f}, meta-train {summary['meta_train_seconds']:.0f} s",
            flush=True,
        )
    return results


def table(setting: str, results: list[tuple[str, dict]]) -> str:
    metric = "mse" if setting == "sine" else "accuracy"
    scale = 1.0 if metric == "mse" else 100.0
    unit = "" if metric == "mse" else " %"

    digits = 3 if metric == "mse" else 1

    def cell(block: dict) -> str:
        mean, ci = scale * block["test"][metric], scale * block["test_ci95"][metric]
        return f"{mean:.{digits}f} ± {ci:.{digits}f}"

    def paired(a: dict, b: dict) -> str:
        """b − a over the same meta-test episodes, mean ± 95% CI of the difference."""
        diff = [
            scale * (y["learned"][metric] - x["learned"][metric])
            for x, y in zip(a["per_seed"], b["per_seed"])
        ]
        stats = summarize(diff)
        return f"{stats['mean']:+.{digits}f} ± {stats['ci95']:.{digits}f}"

    base = results[0][1]["baseline"]
    lines = [
        f"**{TITLES[setting]}**",
        "",
        f"| rung | test {metric}{unit} | change vs the rung above (paired) | meta-train s |",
        "|---|---|---|---|",
        f"| random init, same inner optimizer (no meta-learning) | {cell(base)} | | 0 |",
    ]
    ladder = [s for name, s in results if name != "Meta-SGD"]
    for i, (name, s) in enumerate(results):
        if name == "Meta-SGD":
            change = f"{paired(results[0][1], s)} vs MAML"
        else:
            change = paired(ladder[i - 1], s) if i else ""
        lines.append(f"| {name} | {cell(s)} | {change} | {s['meta_train_seconds']:.0f} |")
    episodes = results[0][1]["meta_test_seeds"]
    steps = results[0][1]["meta_steps"]
    lines.append(
        f"\n{episodes} meta-test episodes (the same ones for every rung), {steps} meta-steps "
        "per rung; ± is the 95% CI (normal approximation)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["sine", "fmnist_5w1s", "fmnist_5w5s"])
    parser.add_argument("--sine-steps", type=int, default=2000)
    parser.add_argument("--image-steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=600)
    parser.add_argument("--out", default="runs/bench_few_shot")
    parser.add_argument("--threads", type=int, default=1)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)
    print(f"machine: {machine(device)}\n", flush=True)
    for setting in args.settings:
        steps = args.sine_steps if setting == "sine" else args.image_steps
        results = run_setting(setting, steps, args.seeds, Path(args.out) / setting, str(device))
        print(table(setting, results), "\n", flush=True)


if __name__ == "__main__":
    main()
