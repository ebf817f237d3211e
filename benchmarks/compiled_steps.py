"""The graph-free inner step, eager vs compiled (``python -m benchmarks.compiled_steps``).

The meta-test step of a frozen run (``meta_test.compile``): digits MLP 64-100-10, batch
64, SGD with momentum 0.9, with cross-entropy and with a learned loss network (ML3's
50-50). Each row asserts first that 5 compiled steps give the eager ones' parameters,
then times the two interleaved in one process, one thread.
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks.common import interleaved_ratio, machine
from learnreg.core.compiled import graph_free_step
from learnreg.core.inner import init_state
from learnreg.data import sklearn_task
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy, NeuralLoss
from learnreg.models import MLP
from learnreg.optimizers import SGD


def row(name: str, loss, args) -> str:
    task = sklearn_task("digits", batch_size=64)
    torch.manual_seed(0)
    model = MLP(task.input_shape, task.out_features, hidden=(100,))
    optimizer = SGD(0.01, momentum=0.9)
    start = init_state(model, RandomInit(), optimizer)
    batch = task.stream("train", 0).next()
    states = {"eager": start, "compiled": start}
    for _ in range(5):
        for mode in states:
            states[mode], _ = graph_free_step(
                model, states[mode], batch, loss, optimizer, mode == "compiled"
            )
    for k, v in states["eager"].params.items():
        torch.testing.assert_close(states["compiled"].params[k], v, rtol=1e-5, atol=1e-6)

    def stepper(compile: bool):
        def step():
            graph_free_step(model, start, batch, loss, optimizer, compile)

        return step

    r = interleaved_ratio(stepper(True), stepper(False), args.steps, args.repeats)
    return f"| {name} | {r['reference_ms']:.2f} | {r['candidate_ms']:.2f} | {1 / r['ratio']:.1f}x |"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=50, help="calls per timed block")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{machine('cpu')}, load average {os.getloadavg()[0]:.1f}\n")
    print(
        "| meta-test step, digits MLP 64-100-10, batch 64, SGD | eager ms | compiled ms | speed-up |"
    )
    print("|---|---:|---:|---:|")
    print(row("cross-entropy", CrossEntropy(), args), flush=True)
    print(row("learned loss (NeuralLoss 50-50)", NeuralLoss(num_classes=10), args), flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
