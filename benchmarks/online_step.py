"""Cost of one online AdaLFL meta-step relative to one plain SGD training step.

The meta-step is learnreg's own ``TruncatedUnroll(window=1, horizon=None)`` step (base
update under the learned loss, meta-gradient of the task loss through it, Adam on the
loss network, guard and bookkeeping); the reference is ``torch.optim.SGD`` on the same
model and batch with the task loss. Both alternate in one process.

    python -m benchmarks.online_step [--generic] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import add_device_argument, device_of, interleaved_ratio, machine
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

SETTINGS = {
    # The reference EvoMAL/ML3 code's Diabetes network (METHODS.md peer figures).
    "diabetes 10-1000-1000-1": ("diabetes", (1000, 1000), 128),
    "digits 64-100-10": ("digits", (100,), 64),
}


def measure(name: str, fast_path: bool, device: torch.device) -> dict:
    dataset, hidden, batch = SETTINGS[name]
    task = sklearn_task(dataset, batch_size=batch)
    task.model_fn = lambda: MLP(task.input_shape, task.out_features, hidden=hidden)
    loss = NeuralLoss(task.kind, task.num_classes, activation="smooth_leaky_relu")
    biases = Biases(loss, SGD(lr=0.01), RandomInit())
    unroll = TruncatedUnroll(window=1, horizon=None, objective_batch="train", fast_path=fast_path)
    trainer = MetaTrainer(SingleTask(task), biases, TaskLoss(), unroll, device=device)

    model = task.build_model(0).to(device)
    plain = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = task.train.x[:batch].to(device), task.train.y[:batch].to(device)
    criterion = F.cross_entropy if task.kind == "classification" else F.mse_loss

    def sgd_step():
        plain.zero_grad(set_to_none=True)
        criterion(model(x), y).backward()
        plain.step()

    def meta_step():
        meta_step(trainer.ctx, unroll)

    return interleaved_ratio(meta_step, sgd_step, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--generic", action="store_true", help="also time the generic double-backward path"
    )
    add_device_argument(parser)
    args = parser.parse_args()
    device = device_of(args.device)
    print(f"machine: {machine(device)}\n")
    print("| model | path | meta-step (ms) | SGD step (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name in SETTINGS:
        for fast in (True, False) if args.generic else (True,):
            r = measure(name, fast, device)
            path = "one-step hypergradient" if fast else "double backward"
            print(
                f"| {name} | {path} | {r['candidate_ms']:.2f} | {r['reference_ms']:.2f} | {r['ratio']:.2f}x |"
            )


if __name__ == "__main__":
    main()
