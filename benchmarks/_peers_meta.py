"""The meta-learning rows of :mod:`benchmarks.peers`: a MAML meta-step against torchopt's
functional API under ``torch.func.vmap`` (timed, and counted), and an ML3 meta-step against
torchopt and ``higher``. Each builds the peer's side of the same step (same episodes,
batches and starting values) and asserts both sides equal before anything is timed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchopt
from torch.func import functional_call, grad, vmap

from benchmarks.common import interleaved_ratio
from benchmarks.few_shot_throughput import trainer as fewshot_trainer
from learnreg.core.estimator import meta_step
from learnreg.estimators.base import derive_seed


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
