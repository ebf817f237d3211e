"""learnreg against peer libraries on the same work, interleaved in one process.

Run: ``python -m benchmarks.peers [--only maml sam] [--repeats 7] [--steps 10]``
(peers: ``pip install -e .[bench]`` for ``pytorch-optimizer``; torchopt is a dependency).

The meta-learning rows (``maml``, ``maml_counts``, ``ml3``) are in
:mod:`benchmarks._peers_meta`. Each comparison first asserts that both sides compute the same thing (meta-gradients or
weights after a step equal to float32 rounding), then times them in alternating blocks
(:func:`benchmarks.common.interleaved_ratio`), so machine load slows both alike and the
ratio stays meaningful on a busy machine even when the absolute times do not.

* ``maml``: one MAML meta-step on sine (``configs/maml/sine.yaml``: MLP 40-40, 5 inner
  SGD steps with Nesterov momentum, Adam outer step with clipping and the preset's cosine
  meta-lr schedule) at meta-batch 4 and 16,
  learnreg's vmapped meta-batch (``meta_step``, as the trainer calls it) vs torchopt's functional API under ``torch.func.vmap``
  doing the same vectorized computation on the same episodes and batches.
  ``maml_counts``: the same two steps counted (Python calls, C calls, aten operators per
  meta-step) instead of timed, which a loaded machine does not blur.
* ``ml3``: one ML3 meta-step (``configs/ml3/digits_mlp.yaml``: a fresh model, one
  differentiable SGD step on the learned loss, the task loss on the same batch, Adam)
  vs the same step written with torchopt's functional API and with ``higher``.
* ``population``: fitness of 16 TaylorGLO candidate losses, learnreg's evaluators vs a
  hand-written ``nn.Module`` + ``torch.optim.SGD`` loop over the candidates; also with
  the population's inner step compiled (``learnreg.core.compiled.graph_free`` around
  ``Population.step``, the wiring a ``compile`` switch of the evaluators makes at
  ``evaluate_group``'s ``members.step`` call).
* ``sam``: one SAM step (SGD base) on the 784-1024-1024-10 MLP, learnreg's
  :class:`~learnreg.optim.SAM` vs ``pytorch_optimizer.SAM``.
* ``gsam``: one GSAM step (α 0.4, constant ρ 0.05, SGD base) on the same MLP, learnreg's
  :class:`~learnreg.optim.GSAM` vs ``pytorch_optimizer.GSAM`` driven as its docs say
  (``set_closure``, a ``ProportionScheduler`` for ρ, ``update_rho_t()`` every step).
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from benchmarks._peers_meta import maml, maml_counts, ml3
from benchmarks.common import interleaved_ratio, machine
from learnreg.models import MLP


def sam(args) -> list[str]:
    from pytorch_optimizer import SAM as PeerSAM

    from learnreg.optim import SAM

    x, y, models = _mlp_pair()
    ours = SAM(models[0].parameters(), torch.optim.SGD, rho=0.05, lr=1e-3, momentum=0.9)
    peer = PeerSAM(models[1].parameters(), torch.optim.SGD, rho=0.05, lr=1e-3, momentum=0.9)

    def step_for(opt, model, first_pass: bool):
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        def step():
            if first_pass:  # pytorch_optimizer's step(closure) expects the first gradients
                closure()
            opt.step(closure)

        return step

    a, b = step_for(ours, models[0], False), step_for(peer, models[1], True)
    return [_weights_row("SAM step", "pytorch_optimizer.SAM", a, b, models, 1, args)]


def _weights_row(work: str, peer: str, ours, theirs, models, checked: int, args) -> str:
    """Assert equal weights after ``checked`` steps of each, then time them interleaved."""
    for _ in range(checked):
        ours(), theirs()
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    r = interleaved_ratio(ours, theirs, args.steps, args.repeats, warmup=2)
    return (
        f"| {work}, MLP 784-1024-1024-10, batch 128 | {peer} | "
        f"{r['candidate_ms']:.1f} | {r['reference_ms']:.1f} | {r['ratio']:.2f}x |"
    )


def _mlp_pair():
    torch.manual_seed(0)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    models = [MLP((1, 28, 28), 10, hidden=(1024, 1024)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    return x, y, models


def gsam(args) -> list[str]:
    from pytorch_optimizer import GSAM as PeerGSAM
    from pytorch_optimizer.lr_scheduler.proportion import ProportionScheduler

    from learnreg.optim import GSAM

    x, y, models = _mlp_pair()
    ours = GSAM(
        models[0].parameters(), torch.optim.SGD, rho_max=0.05, rho_min=0.05, alpha=0.4,
        lr=1e-3, momentum=0.9,
    )  # fmt: skip
    base = torch.optim.SGD(models[1].parameters(), lr=1e-3, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(base, lambda _: 1.0)
    rho = ProportionScheduler(schedule, max_lr=1e-3, min_lr=1e-3, max_value=0.05, min_value=0.05)
    peer = PeerGSAM(models[1].parameters(), base, model=models[1], rho_scheduler=rho, alpha=0.4)
    peer.set_closure(F.cross_entropy, x, y)

    def closure():
        ours.zero_grad()
        loss = F.cross_entropy(models[0](x), y)
        loss.backward()
        return loss

    def ours_step():
        ours.step(closure)

    def peer_step():
        peer.step()
        peer.update_rho_t()

    # two steps checked: the second uses the momentum buffers of the first
    return [
        _weights_row(
            "GSAM step (α 0.4)", "pytorch_optimizer.GSAM", ours_step, peer_step, models, 2, args
        )
    ]


def population(args) -> list[str]:
    """16 TaylorGLO candidates on digits (MLP 64-32-10, 100 SGD steps each): learnreg's
    vmapped and sequential evaluators vs the hand-written nn.Module + torch.optim.SGD loop
    of :func:`benchmarks.population_eval.plain_pytorch`."""
    import functools

    from benchmarks.population_eval import fitness, plain_pytorch, taylor
    from learnreg.core.objectives import TaskError
    from learnreg.data import sklearn_task
    from learnreg.estimators import SerialEvaluator, VmapEvaluator
    from learnreg.estimators.evaluators import FitnessProblem
    from learnreg.inits import RandomInit
    from learnreg.optimizers import SGD

    task = sklearn_task("digits", batch_size=64)
    task.model_fn = functools.partial(MLP, task.input_shape, task.out_features, hidden=[32])
    losses = taylor(task.kind, 16)
    problem = FitnessProblem(
        [task], [1], SGD(0.01, momentum=0.9), RandomInit(), TaskError(), steps=100, device="cpu"
    )
    hand = functools.partial(plain_pytorch, problem, losses)
    modes = {
        "learnreg vmap": functools.partial(fitness, VmapEvaluator(), problem, losses),
        "learnreg sequential": functools.partial(fitness, SerialEvaluator(), problem, losses),
        "learnreg vmap, compiled step": _compiled(
            functools.partial(fitness, VmapEvaluator(), problem, losses)
        ),
        "learnreg sequential, compiled step": _compiled(
            functools.partial(fitness, SerialEvaluator(), problem, losses)
        ),
    }
    reference = hand()
    rows = []
    for name, fn in modes.items():
        # validation errors of 16 runs: equal up to an example flipped by float rounding
        got = fn()
        assert max(abs(a - b) for a, b in zip(got, reference)) <= 1.5 / len(task.val), name
        r = interleaved_ratio(fn, hand, 1, args.repeats, warmup=0)
        rows.append(
            f"| population fitness, 16 Taylor candidates, digits MLP 64-32-10, 100 steps, "
            f"{name} | hand-written nn.Module + torch.optim.SGD loop | "
            f"{r['candidate_ms']:.0f} | {r['reference_ms']:.0f} | {r['ratio']:.2f}x |"
        )
    return rows


def _compiled(fn):
    """``fn`` with the population's inner step compiled (``graph_free(Population.step)``)."""
    from learnreg.core.compiled import graph_free
    from learnreg.estimators.evaluators.population import Population

    def run():
        plain = Population.step
        Population.step = graph_free(plain)
        try:
            return fn()
        finally:
            Population.step = plain

    return run


BENCHES = {
    "maml": maml,
    "maml_counts": maml_counts,
    "ml3": ml3,
    "sam": sam,
    "gsam": gsam,
    "population": population,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="calls per timed block")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{machine('cpu')}, load average {os.getloadavg()[0]:.1f}\n")
    print("| work | peer | learnreg ms | peer ms | learnreg / peer |")
    print("|---|---|---:|---:|---:|")
    for name in args.only:
        for row in BENCHES[name](args):
            print(row, flush=True)


if __name__ == "__main__":
    main()
