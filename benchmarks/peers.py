"""learnreg against peer libraries on the same work, interleaved in one process.

Run: ``python -m benchmarks.peers [--only maml sam] [--repeats 7] [--steps 10]``
(peers: ``pip install -e .[bench]`` for ``pytorch-optimizer``; torchopt is a dependency).

Each comparison first asserts that both sides compute the same thing (meta-gradients or
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
import torchopt
from torch.func import functional_call, grad, vmap

from benchmarks.common import interleaved_ratio, machine
from benchmarks.few_shot_throughput import trainer as fewshot_trainer
from learnreg.core.estimator import meta_step
from learnreg.estimators.base import derive_seed
from learnreg.models import MLP


def _maml_reference(tr):
    """torchopt functional + vmap: the same meta-step as ``tr`` (same episodes, same
    batch order, same θ0), on its own copy of θ0 and its own Adam."""
    est, family = tr.estimator, tr.ctx.family
    init = tr.ctx.biases.init
    theta = {k: v.detach().clone().requires_grad_() for k, v in zip(init.names, init.theta)}
    model = tr.ctx.model_for(family.sample(0), 0)  # any MLP 40-40: used functionally
    inner = torchopt.sgd(0.01, momentum=0.9, nesterov=True)
    outer = torch.optim.Adam(theta.values(), lr=1e-3)
    ours = tr.ctx.outer.scheduler  # the preset's cosine meta-lr schedule, taken the same way
    schedule = ours and torch.optim.lr_scheduler.CosineAnnealingLR(outer, ours.T_max, ours.eta_min)
    window, state = est.window, {"next": 0}

    def adapt(theta, xs, ys, xq, yq):
        def support_loss(p, x, y):
            return F.mse_loss(functional_call(model, p, (x,)), y)

        params, opt_state = theta, inner.init(theta)
        for i in range(window):
            g = grad(support_loss)(params, xs[i], ys[i])
            updates, opt_state = inner.update(g, opt_state, inplace=False)
            params = torchopt.apply_updates(params, updates, inplace=False)
        return F.mse_loss(functional_call(model, params, (xq,)), yq)

    def step():
        xs, ys, xq, yq = [], [], [], []
        for j in range(est.meta_batch):
            index = state["next"] + j
            task = family.sample(index)
            seed = derive_seed(tr.ctx.seed, "meta_train", index)
            sx, sy = task.stream("train", seed).take(window)
            qx, qy = task.stream("val", seed + 1).take(1)
            xs.append(sx), ys.append(sy), xq.append(qx[0]), yq.append(qy[0])
        state["next"] += est.meta_batch
        outer.zero_grad()
        # θ0 broadcast over the tasks (a view), so the momentum state is per task
        thetas = {k: v.expand(est.meta_batch, *v.shape) for k, v in theta.items()}
        losses = vmap(adapt)(
            thetas, torch.stack(xs), torch.stack(ys), torch.stack(xq), torch.stack(yq)
        )
        losses.mean().backward()
        grads = [p.grad.clone() for p in theta.values()]
        torch.nn.utils.clip_grad_norm_(theta.values(), 10.0)
        outer.step()
        if schedule is not None:
            schedule.step()
        return losses.detach(), grads, list(theta.values())

    step.lr = lambda: outer.param_groups[0]["lr"]
    return step


def _first_meta_step(tr, role: str):
    """One meta-step the trainer's way (:func:`~learnreg.core.estimator.meta_step`),
    returning its metrics and the estimate's meta-gradient of ``role`` (parameter order)."""
    captured = {}
    estimate = tr.estimator.estimate

    def capture(ctx):
        result = estimate(ctx)
        # copies: the outer step clips the gradient it is given in place
        captured["grads"] = {n: g.clone() for n, g in result.grads[role].items()}
        return result

    tr.estimator.estimate = capture  # an instance attribute: meta_step still sees the class's
    try:
        metrics = meta_step(tr.ctx, tr.estimator)
    finally:
        del tr.estimator.estimate
    return metrics, list(captured["grads"].values())


def _maml_row(meta_batch: int, args) -> str:
    tr = fewshot_trainer("maml/sine", True, meta_batch)
    reference = _maml_reference(tr)
    metrics, grads_ours = _first_meta_step(tr, "init")
    losses, grads, theta = reference()
    assert abs(metrics["meta_loss"] - float(losses.mean())) < 1e-5 * max(1.0, metrics["meta_loss"])
    for a, b in zip(grads_ours, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # and the same outer step (clipping, Adam, the schedule's next learning rate)
    for a, b in zip(tr.ctx.biases.init.theta, theta):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    assert tr.ctx.outer.optimizer.param_groups[0]["lr"] == reference.lr()
    r = interleaved_ratio(
        lambda: meta_step(tr.ctx, tr.estimator), reference, args.steps, args.repeats, warmup=2
    )
    return (
        f"| MAML sine meta-step, B={meta_batch} | torchopt functional + vmap | "
        f"{r['candidate_ms']:.1f} | {r['reference_ms']:.1f} | {r['ratio']:.2f}x |"
    )


def maml(args) -> list[str]:
    return [_maml_row(meta_batch, args) for meta_batch in (4, 16)]


def _counts(step) -> str:
    """Python-level calls, C-function calls (``sys.setprofile``) and aten operators
    (``torch.profiler``, forward and backward) of one call of ``step``: deterministic, so
    they compare two versions on a loaded machine where timings cannot."""
    import collections
    import sys

    events = collections.Counter()
    sys.setprofile(lambda frame, event, arg: events.update((event,)))
    try:
        step()
    finally:
        sys.setprofile(None)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    ops = sum(e.name.startswith("aten::") for e in prof.events())
    return f"{events['call']:,} / {events['c_call']:,} / {ops:,}"


def maml_counts(args) -> list[str]:
    """The MAML rows' work counted instead of timed (after three warm-up steps each)."""
    rows = []
    for meta_batch in (4, 16):
        tr = fewshot_trainer("maml/sine", True, meta_batch)
        reference = _maml_reference(tr)
        ours = lambda tr=tr: meta_step(tr.ctx, tr.estimator)  # noqa: E731
        for _ in range(3):
            ours(), reference()
        rows.append(
            f"| MAML sine meta-step, B={meta_batch}: Python calls / C calls / aten ops | "
            f"torchopt functional + vmap | {_counts(ours)} | {_counts(reference)} | – |"
        )
    return rows


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


def _ml3_trainer():
    from learnreg import config as configlib
    from learnreg.experiment import build

    cfg = configlib.load("configs/ml3/digits_mlp.yaml", ["logger.backends=[none]", "device=cpu"])
    return build(cfg).trainer


def _ml3_peer(tr, peer: str):
    """One ML3 meta-step the peer's way: a fresh seeded model and stream per step (as
    learnreg's run set-up, same seeds), one differentiable SGD step on the learned loss,
    the task loss on the same batch after it, Adam on a copy of the loss role."""
    import copy

    import higher

    ctx = tr.ctx
    loss = copy.deepcopy(ctx.biases.loss)
    outer = torch.optim.Adam(loss.parameters(), lr=1e-3)
    task, state = ctx.family.sample(0), {"next": 0}
    sgd = torchopt.sgd(0.01)

    def step():
        seed = derive_seed(ctx.seed, "meta_train", state["next"])
        state["next"] += 1
        model = task.build_model(seed)
        x, y = task.stream("train", seed).next()
        outer.zero_grad()
        if peer == "higher":
            inner = torch.optim.SGD(model.parameters(), lr=0.01)
            with higher.innerloop_ctx(model, inner, copy_initial_weights=True) as (fmodel, opt):
                opt.step(loss(fmodel(x), y))
                meta = F.cross_entropy(fmodel(x), y)
                meta.backward()
        else:
            params = {k: v.detach().requires_grad_() for k, v in model.named_parameters()}
            g = torch.autograd.grad(
                loss(functional_call(model, params, (x,)), y),
                tuple(params.values()),
                create_graph=True,
            )
            updates, _ = sgd.update(dict(zip(params, g)), sgd.init(params), inplace=False)
            new = torchopt.apply_updates(params, updates, inplace=False)
            meta = F.cross_entropy(functional_call(model, new, (x,)), y)
            meta.backward()
        grads = [p.grad.clone() for p in loss.parameters()]
        outer.step()
        return float(meta.detach()), grads

    return step


def ml3(args) -> list[str]:
    rows = []
    for peer in ("torchopt", "higher"):
        tr = _ml3_trainer()
        reference = _ml3_peer(tr, peer)
        metrics, grads_ours = _first_meta_step(tr, "loss")
        meta, grads = reference()
        assert abs(metrics["meta_loss"] - meta) < 1e-5 * max(1.0, meta), (metrics, meta)
        for a, b in zip(grads_ours, grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        r = interleaved_ratio(
            lambda tr=tr: meta_step(tr.ctx, tr.estimator),
            reference,
            args.steps,
            args.repeats,
            warmup=2,
        )
        rows.append(
            f"| ML3 meta-step, digits MLP 64-100-10, batch 64 | {peer} | "
            f"{r['candidate_ms']:.1f} | {r['reference_ms']:.1f} | {r['ratio']:.2f}x |"
        )
    return rows


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
