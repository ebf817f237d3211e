"""Population evaluation: the vmapped population against one-by-one training, same
candidates, same seeds and batches, in one run.

Three ways to compute the fitness of P candidate losses (train a fresh model with each
for ``--steps`` SGD steps, then the validation metric):

* ``vmap``: learnreg's default evaluator, the population as one batched training run;
* ``sequential``: learnreg's serial evaluator (the same functional inner step, one
  candidate after another);
* ``plain PyTorch``: an ``nn.Module`` + ``torch.optim.SGD`` + ``loss.backward()`` loop
  per candidate, the way one would write it by hand.

Run: ``python -m benchmarks.population_eval [--repeats 5] [--steps 100] [--threads 1]
[--device cuda] [--modes plain,vmap]``.
Every mode's fitness values are first asserted equal (to float rounding); the modes are
interleaved in each repeat so that machine load affects them alike; the table shows medians, and the largest fitness difference between vmap and sequential
(absolute, or relative where the fitness exceeds 1).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time

import torch

from benchmarks.common import add_device_argument, device_of, machine, sync
from learnreg.core.objectives import TaskError
from learnreg.data import sklearn_task
from learnreg.estimators import SerialEvaluator, VmapEvaluator
from learnreg.estimators.evaluators import FitnessProblem
from learnreg.inits import RandomInit
from learnreg.losses import SymbolicLoss, TaylorLoss
from learnreg.losses.gp import GeneticProgramming
from learnreg.models import MLP
from learnreg.optimizers import SGD

TREES = {  # losses a GP population could hold, all trainable
    "classification": [
        "mul(-1.0, mul(y, log(fx)))",
        "square(sub(fx, y))",
        "abs(sub(fx, y))",
        "mul(-1.0, mul(y, aq(fx, sub(fx, 1.0))))",
        "sub(square(sub(fx, y)), mul(y, fx))",
        "mul(y, sub(sqrt(fx), log(fx)))",
        "tanh(square(sub(y, fx)))",
        "aq(square(sub(fx, y)), add(y, 1.0))",
    ],
    "regression": [
        "square(sub(fx, y))",
        "abs(sub(fx, y))",
        "sqrt(add(square(sub(fx, y)), 1.0))",
        "mul(square(sub(fx, y)), add(abs(y), 1.0))",
        "add(square(sub(fx, y)), abs(sub(fx, y)))",
        "log(add(square(sub(fx, y)), 1.0))",
        "aq(square(sub(fx, y)), tanh(y))",
        "max(abs(sub(fx, y)), square(sub(fx, y)))",
    ],
}


def taylor(kind: str, count: int, problem: FitnessProblem | None = None) -> list:
    """Cross-entropy-like (or squared-error-like) coefficient vectors, perturbed."""
    g = torch.Generator().manual_seed(0)
    if kind == "classification":
        base, num = torch.tensor([0.0, 0.5, 0.0, 0.0, 0.0, 2.0, -2.0, 0.0]), 10
    else:
        base, num = torch.tensor([0.0, 0.0, 0.0, -1.0, 0.0, 2.0, 0.0, 0.0]), 1
    return [
        TaylorLoss(kind, num, (base + 0.1 * torch.randn(8, generator=g)).tolist())
        for _ in range(count)
    ]


def symbolic(kind: str, count: int, problem: FitnessProblem | None = None) -> list:
    num = 10 if kind == "classification" else 1
    trees = TREES[kind]
    return [SymbolicLoss(kind, num, trees[i % len(trees)], seed=i) for i in range(count)]


def gp_trees(kind: str, count: int, problem: FitnessProblem) -> list:
    """Distinct random trees from the GP searcher's first generation (seed 0, drawn twice
    as many as needed), as EvoMAL's first generation evaluates them (none shares an
    expression, so none is grouped): the first ``count`` on which the sequential and
    vmapped evaluators agree. A few trees are chaotic (e.g. ``square(log(log(aq(y, fx))))``,
    the protected log's kink nested) and amplify float rounding between the two into
    different errors; that is the tree, not the evaluator, and it would fail the equality
    check every timed row starts with."""
    num = 10 if kind == "classification" else 1
    searcher = GeneticProgramming(population=2 * count)
    searcher.start(SymbolicLoss(kind, num), seed=0)
    pool = [SymbolicLoss(kind, num, e, seed=i) for i, e in enumerate(searcher.ask())]
    both = zip(fitness(SerialEvaluator(), problem, pool), fitness(VmapEvaluator(), problem, pool))
    agree = [loss for loss, (a, b) in zip(pool, both) if _agree(a, b, problem.tasks[0])]
    return agree[:count]


SETTINGS = [
    # title, dataset, hidden widths, batch size, candidates
    ("digits, MLP 64-100-10, Taylor", "digits", [100], 64, taylor),
    ("digits, MLP 64-32-10, Taylor", "digits", [32], 64, taylor),
    ("digits, MLP 64-100-10, symbolic trees", "digits", [100], 64, symbolic),
    ("Diabetes, MLP 10-100-1, symbolic trees", "diabetes", [100], 128, symbolic),
    (
        "digits, MLP 64-100-10, GP's first generation (distinct trees)",
        "digits",
        [100],
        64,
        gp_trees,
    ),
    (
        "Diabetes, MLP 10-100-1, GP's first generation (distinct trees)",
        "diabetes",
        [100],
        128,
        gp_trees,
    ),
    (
        "Diabetes, MLP 10-1000-1000-1 (EvoMAL's), symbolic trees",
        "diabetes",
        [1000, 1000],
        128,
        symbolic,
    ),
]


def plain_pytorch(problem: FitnessProblem, losses: list) -> list[float]:
    """The hand-written loop: one model, one torch.optim.SGD, backward() per step."""
    device = torch.device(problem.device)
    task, seed, out = problem.tasks[0].to(device), problem.seeds[0], []
    args = problem.optimizer.init_args
    for loss in losses:
        loss = loss.to(device)
        model = task.build_model(seed).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=args["lr"], momentum=args["momentum"])
        stream = task.stream("train", seed)
        for _ in range(problem.steps):
            x, y = stream.next()
            opt.zero_grad(set_to_none=True)
            loss(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            pred = model(task.val.x)
            if task.kind == "classification":
                out.append((pred.argmax(-1) != task.val.y).float().mean().item())
            else:
                out.append(torch.nn.functional.mse_loss(pred, task.val.y).item())
    return out


def fitness(evaluator, problem: FitnessProblem, losses: list) -> list[float]:
    return [e.fitness for e in evaluator.evaluate(problem, losses)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="training steps per candidate")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="run the settings whose title contains this")
    parser.add_argument(
        "--modes", default="plain,sequential,vmap", help="comma-separated subset of the modes"
    )
    add_device_argument(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = device_of(args.device)
    print(
        f"{machine(device)}, {torch.get_num_threads()} thread(s), population {args.population}, {args.steps} steps\n"
    )
    print(
        "| setting | plain PyTorch (s) | learnreg sequential (s) | learnreg vmap (s) | vmap vs sequential | vmap vs plain | max fitness diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for title, dataset, hidden, batch, make in SETTINGS:
        if args.only not in title:
            continue
        task = sklearn_task(dataset, batch_size=batch)
        task.model_fn = functools.partial(MLP, task.input_shape, task.out_features, hidden=hidden)
        problem = FitnessProblem(
            [task],
            [1],
            SGD(0.01, momentum=0.9),
            RandomInit(),
            TaskError(),
            steps=args.steps,
            device=str(device),
        )
        losses = make(task.kind, args.population, problem)
        modes = {
            "plain": functools.partial(plain_pytorch, problem, losses),
            "sequential": functools.partial(fitness, SerialEvaluator(), problem, losses),
            "vmap": functools.partial(fitness, VmapEvaluator(), problem, losses),
        }
        modes = {m: fn for m, fn in modes.items() if m in args.modes.split(",")}
        times = {m: [] for m in modes}
        results = {}
        for m, fn in modes.items():
            results[m] = fn()  # warm-up (and the fitness values compared below)
        _assert_equal_results(results, task)
        for _ in range(args.repeats):
            for m, fn in modes.items():
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times[m].append(time.perf_counter() - start)
        t = {m: statistics.median(v) for m, v in times.items()}
        t.update({m: math.nan for m in ("plain", "sequential", "vmap") if m not in t})
        # relative to the value where it exceeds 1 (diverging candidates reach MSE ~1e3)
        diff = max(
            (abs(a - b) / max(1.0, abs(b)) for a, b in zip(*_pair(results))), default=math.nan
        )
        print(
            f"| {title} | {t['plain']:.2f} | {t['sequential']:.2f} | {t['vmap']:.2f} | "
            f"{t['sequential'] / t['vmap']:.1f}x | {t['plain'] / t['vmap']:.1f}x | {diff:.1e} |",
            flush=True,
        )


def _assert_equal_results(results: dict, task) -> None:
    """Every mode's fitness equals the first's before anything is timed: validation errors
    up to one example flipped by float rounding, MSEs to 1e-4 relative."""
    names = list(results)
    for m in names[1:]:
        for a, b in zip(results[m], results[names[0]]):
            ok = _agree(a, b, task)
            assert ok, f"{m} and {names[0]} disagree: {a} vs {b}"


def _agree(a: float, b: float, task) -> bool:
    if task.kind == "classification":
        return abs(a - b) <= 1.5 / len(task.val)
    return abs(a - b) <= 1e-4 * max(1.0, abs(b)) or (math.isnan(a) and math.isnan(b))


def _pair(results: dict) -> tuple[list, list]:
    """The vmap and sequential fitness values (empty when either mode did not run)."""
    if "vmap" in results and "sequential" in results:
        return results["vmap"], results["sequential"]
    return [], []


if __name__ == "__main__":
    main()
