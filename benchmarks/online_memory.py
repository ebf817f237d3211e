"""Peak memory over a long online AdaLFL run stays flat (no graph kept across steps).

torchopt's MetaAdam is known to grow memory over long unrolls (torchopt issue #218);
learnreg detaches the inner state after every truncation window, so the resident set
size should stop growing after the first steps.

    python -m benchmarks.online_memory [--steps 5000]
"""

from __future__ import annotations

import argparse
import resource

import psutil
import torch

from benchmarks.common import machine
from learnreg.core.bias import Biases
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import SingleTask
from learnreg.core.trainer import MetaTrainer
from learnreg.data import sklearn_task
from learnreg.estimators import TruncatedUnroll
from learnreg.inits import RandomInit
from learnreg.losses import NeuralLoss
from learnreg.models import MLP
from learnreg.optimizers import SGD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--every", type=int, default=500)
    args = parser.parse_args()
    task = sklearn_task("digits", batch_size=64)
    task.model_fn = lambda: MLP(task.input_shape, task.out_features, hidden=(100,))
    loss = NeuralLoss(task.kind, task.num_classes, activation="smooth_leaky_relu")
    unroll = TruncatedUnroll(window=1, horizon=None, objective_batch="train")
    trainer = MetaTrainer(
        SingleTask(task), Biases(loss, SGD(lr=0.01), RandomInit()), TaskLoss(), unroll, device="cpu"
    )
    process = psutil.Process()
    rows = []
    for step in range(1, args.steps + 1):
        unroll.step(trainer.ctx)
        if step % args.every == 0:
            cuda = (
                torch.cuda.max_memory_allocated() / 2**20
                if torch.cuda.is_available()
                else float("nan")
            )
            rows.append((step, process.memory_info().rss / 2**20, cuda))
    print(f"machine: {machine()}\n")
    print("| online steps | RSS (MiB) | CUDA peak (MiB) |")
    print("|---|---|---|")
    for step, rss, cuda in rows:
        print(f"| {step} | {rss:.1f} | {cuda:.1f} |")
    growth = rows[-1][1] - rows[0][1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nRSS growth from step {rows[0][0]} to {rows[-1][0]}: {growth:+.1f} MiB (process peak {peak:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
