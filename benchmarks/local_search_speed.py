"""EvoMAL's local search: cost of one meta-step on the node weights relative to one plain
training step, on the reference setting (Diabetes, MLP 10-1000-1000-1, batch 128).

* ``plain PyTorch step``: ``nn.Module`` forward, the symbolic loss, ``backward()``,
  ``torch.optim.SGD`` (momentum 0.9, Nesterov, weight decay 5e-4);
* ``learnreg inner step``: the functional ``inner_step`` under ``no_grad``;
* ``local-search meta-step``: ``TruncatedUnroll(window=1)`` on the tree's weights (one
  differentiable inner step, the meta-gradient, Adam), without (``horizon=None``) and with
  (``horizon=1``, EvoMAL's) a freshly initialized model every meta-step.

Run: ``python -m benchmarks.local_search_speed [--repeats 5] [--steps 20]``. Medians of the
repeats, modes interleaved. The peer figure (EvoMAL's reference code on these machines):
4.0-4.5x a plain step.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from learnreg.core.bias import Biases
from learnreg.core.estimator import meta_step
from learnreg.core.inner import inner_step
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import SingleTask
from learnreg.data import sklearn_task
from learnreg.estimators import MetaContext, TruncatedUnroll
from learnreg.inits import RandomInit
from learnreg.losses import SymbolicLoss
from learnreg.models import MLP
from learnreg.optimizers import SGD

TREE = "add(square(sub(fx, y)), mul(0.5, abs(aq(sub(fx, y), y))))"


def setting(hidden: list[int]):
    task = sklearn_task("diabetes", batch_size=128)
    task.model_fn = functools.partial(MLP, task.input_shape, 1, hidden=hidden)
    loss = SymbolicLoss("regression", 1, TREE)
    optimizer = SGD(0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    return task, loss, optimizer


def plain_steps(task, loss, steps: int):
    model = task.build_model(0)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    stream = task.stream("train", 0)

    def run():
        for _ in range(steps):
            x, y = stream.next()
            opt.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            opt.step()

    return run


def learnreg_steps(task, loss, optimizer, steps: int):
    ctx = context(task, loss, optimizer)
    run = ctx.new_run("bench", 0)

    def go():
        with torch.no_grad():
            for _ in range(steps):
                run.state, _ = inner_step(run.model, run.state, run.next_train(), loss, optimizer)

    return go


def context(task, loss, optimizer):
    params = [p for p in loss.parameters() if p.requires_grad]
    outer = OuterOptimizer(params, torch.optim.Adam(params, lr=1e-3))
    biases = Biases(loss, optimizer, RandomInit())
    return MetaContext(SingleTask(task), biases, TaskLoss(), outer, 0, torch.device("cpu"))


def meta_steps(task, loss, optimizer, steps: int, horizon):
    ctx = context(task, loss, optimizer)
    unroll = TruncatedUnroll(window=1, horizon=horizon, objective_batch="train")

    def go():
        for _ in range(steps):
            meta_step(ctx, unroll)

    return go


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, Diabetes, batch 128\n"
    )
    print(
        "| model | plain PyTorch step (ms) | learnreg inner step (ms) | meta-step, no reset (ms) | meta-step, fresh model (ms) | meta-step / plain step |"
    )
    print("|---|---|---|---|---|---|")
    for hidden in ([1000, 1000], [100]):
        task, loss, optimizer = setting(hidden)
        modes = {
            "plain": plain_steps(task, loss, args.steps),
            "inner": learnreg_steps(task, loss, optimizer, args.steps),
            "meta": meta_steps(task, loss, optimizer, args.steps, None),
            "meta_reset": meta_steps(task, loss, optimizer, args.steps, 1),
        }
        times = {m: [] for m in modes}
        for fn in modes.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for m, fn in modes.items():
                start = time.perf_counter()
                fn()
                times[m].append((time.perf_counter() - start) / args.steps * 1e3)
        t = {m: statistics.median(v) for m, v in times.items()}
        name = "MLP 10-" + "-".join(map(str, hidden)) + "-1"
        print(
            f"| {name} | {t['plain']:.2f} | {t['inner']:.2f} | {t['meta']:.2f} | {t['meta_reset']:.2f} | "
            f"{t['meta'] / t['plain']:.1f}x (fresh model: {t['meta_reset'] / t['plain']:.1f}x) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
