"""The tuned baseline's lr grid: copies' gradients by one vmap vs a loop over the copies.

:func:`learnreg.eval.grid_runs.train_grid` trains one model per learning rate as a stacked
run. This times its two ways of computing the copies' gradients on a preset's model, task
and grid (the same batches, the same stacked optimizer update), after checking that both
give the same parameters: ``vmap`` (one batched call) and ``loop`` (one call per copy).
Repeats alternate the order; the figure is the median of the per-repeat ratios.

    python -m benchmarks.tune_grid [--presets ml3/fmnist_cnn ml3/diabetes_mlp] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import add_device_argument, device_of, machine
from learnreg import config as configlib
from learnreg.eval.baselines import lr_grid
from learnreg.eval.grid_runs import base_lr, train_grid
from learnreg.experiment import build


def grid_of(preset: str, device: str):
    cfg = configlib.load(f"configs/{preset}.yaml", ["logger.backends=[]", f"device={device}"])
    exp = build(cfg)
    lrs = lr_grid(base_lr(exp.baseline.optimizer), cfg["baseline"]["tune"]["grid"])
    task = exp.family.meta_test_task(0).to(exp.trainer.device)
    return exp, task, lrs


def timed(exp, task, lrs, steps: int, vectorize: bool):
    if exp.trainer.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    _, states, _ = train_grid(exp.trainer.ctx, exp.baseline, task, 0, steps, lrs, vectorize)
    if exp.trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, states


def measure(preset: str, steps: int, repeats: int, device: str) -> dict:
    exp, task, lrs = grid_of(preset, device)
    _, a = timed(exp, task, lrs, 2, True)  # warm-up, and the equality check
    _, b = timed(exp, task, lrs, 2, False)
    for sa, sb in zip(a, b):
        for name, value in sa.params.items():
            torch.testing.assert_close(value, sb.params[name], rtol=1e-4, atol=1e-6)
    ratios, times = [], {True: [], False: []}
    for r in range(repeats):
        order = (True, False) if r % 2 == 0 else (False, True)
        got = {v: timed(exp, task, lrs, steps, v)[0] for v in order}
        for v in order:
            times[v].append(got[v] / steps)
        ratios.append(got[True] / got[False])
    return {
        "preset": preset,
        "copies": len(lrs),
        "vmap_ms": 1000 * statistics.median(times[True]),
        "loop_ms": 1000 * statistics.median(times[False]),
        "ratio": statistics.median(ratios),
        "range": (min(ratios), max(ratios)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=["ml3/fmnist_cnn", "ml3/diabetes_mlp"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=4)
    add_device_argument(parser)
    args = parser.parse_args()
    device = device_of(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the benchmark runs' setting (OMP_NUM_THREADS=1)
    print(f"machine: {machine(device)}\n")
    print("| preset | copies (lrs) | vmap ms/step | loop ms/step | vmap / loop (median, range) |")
    print("|---|---:|---:|---:|---|")
    for preset in args.presets:
        m = measure(preset, args.steps, args.repeats, str(device))
        lo, hi = m["range"]
        print(
            f"| {m['preset']} | {m['copies']} | {m['vmap_ms']:.0f} | {m['loop_ms']:.0f} | "
            f"{m['ratio']:.2f}x ({lo:.2f}–{hi:.2f}) |"
        )


if __name__ == "__main__":
    main()
