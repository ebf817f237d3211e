"""The meta-batch's inner runs share one model and gather their batches per window; the
meta-gradient is the one of the old construction, where every task built its own seeded
``nn.Module`` and drew its batches one ``next()`` at a time."""

from __future__ import annotations

import pytest
import torch
from fewshot_util import context, digits_family, flat_grads, roles, sine_family

from learnreg.core.bias import Biases
from learnreg.core.estimator import meta_step
from learnreg.core.inner import init_state, inner_step
from learnreg.core.objectives import TaskLoss
from learnreg.core.task import BatchStream, Split
from learnreg.estimators import MetaContext, TruncatedUnroll
from learnreg.estimators.base import derive_seed
from learnreg.inits import RandomInit


def _reference_grads(family, biases, meta_batch, window, objective_batch, average):
    """The meta-gradient built the old way: a fresh seeded module and two fresh streams
    per task, a Python loop over tasks, one ``next()`` per batch."""
    ctx = context(family, biases)
    ctx.outer.zero_grad()
    losses = []
    for index in range(meta_batch):
        task = family.sample(index)
        seed = derive_seed(ctx.seed, "meta_train", index)
        model = task.build_model(seed)
        state = init_state(model, biases.init, biases.optimizer, task)
        train, val = task.stream("train", seed), task.stream("val", seed + 1)
        total = 0.0
        for i in range(window):
            batch = train.next()
            state, _ = inner_step(model, state, batch, biases.loss, biases.optimizer)
            if average or i == window - 1:
                target = val.next() if objective_batch == "val" else batch
                total = total + ctx.objective(model, state, target, task)
        meta_loss = total / window if average else total
        (meta_loss / meta_batch).backward()
        losses.append(float(meta_loss.detach()))
    return flat_grads(biases.meta_parameters()), sum(losses) / len(losses)


@pytest.mark.parametrize(
    "setting",
    [
        ("sine", dict(init="maml", optimizer="sgd", loss="ce")),
        ("digits", dict(init="film", optimizer="precond", loss="learned_film", mode="warp")),
    ],
    ids=["maml-sine", "npbml-digits"],
)
@pytest.mark.parametrize("objective_batch,average", [("val", False), ("train", True)])
@pytest.mark.parametrize("vmap", [False, True])
def test_shared_model_meta_batch_equals_per_task_modules(setting, objective_batch, average, vmap):
    name, spec = setting
    film = spec["init"] == "film"
    make = digits_family if name == "digits" else sine_family
    family = make(film=film)
    meta_batch, window = 3, 3
    ref, ref_loss = _reference_grads(
        family, roles(family, **spec), meta_batch, window, objective_batch, average
    )
    biases = roles(family, **spec)
    ctx = context(family, biases)
    unroll = TruncatedUnroll(
        window=window,
        horizon=window,
        meta_batch=meta_batch,
        objective_batch=objective_batch,
        average=average,
        vmap=vmap,
    )
    metrics = meta_step(ctx, unroll)
    assert len({id(run.model) for run in unroll.runs}) == 1  # one model for the meta-batch
    grads = flat_grads(biases.meta_parameters())
    assert ref.abs().max() > 1e-4
    if vmap:  # batched kernels: equal to float64 rounding
        torch.testing.assert_close(grads, ref, rtol=1e-9, atol=1e-13)
        assert metrics["meta_loss"] == pytest.approx(ref_loss, rel=1e-12)
    else:  # the same operations in the same order: bit for bit
        assert torch.equal(grads, ref)
        assert metrics["meta_loss"] == ref_loss


def test_an_init_that_reads_the_weights_still_gets_a_seeded_model_per_run():
    family = sine_family()
    maml = roles(family)
    biases = Biases(maml.loss, maml.optimizer, RandomInit())
    ctx = MetaContext(family, biases, TaskLoss(), None, 0, torch.device("cpu"))
    a, b = ctx.new_run("meta_train", 0), ctx.new_run("meta_train", 1)
    assert a.model is not b.model
    first = next(iter(a.state.params))
    assert not torch.equal(a.state.params[first], b.state.params[first])
    again = ctx.new_run("meta_train", 0)
    for k, v in a.state.params.items():
        assert torch.equal(again.state.params[k], v)


@pytest.mark.parametrize("batch_size", [3, 10])
def test_take_is_n_calls_of_next(batch_size):
    split = Split(torch.randn(10, 2), torch.arange(10))
    one, many = BatchStream(split, batch_size, seed=4), BatchStream(split, batch_size, seed=4)
    x, y = many.take(5)
    assert x.shape == (5, batch_size, 2) and y.shape == (5, batch_size)
    for i in range(5):
        bx, by = one.next()
        assert torch.equal(x[i], bx) and torch.equal(y[i], by)
    sa, sb = one.state_dict(), many.state_dict()
    assert torch.equal(sa["perm"], sb["perm"]) and sa["pos"] == sb["pos"]
    assert torch.equal(sa["generator"], sb["generator"])


@pytest.mark.parametrize("vmap", [False, True])
def test_resumed_meta_batch_continues_bit_for_bit(vmap):
    """Runs alive across meta-steps (window < horizon) restored from a state dict onto
    the shared model continue exactly (the context's outer learning rate is 0, so the
    meta-parameters stay put and only the runs carry the state). A learned loss carries
    the meta-gradient: θ0 lies outside every window after the first."""
    family = sine_family()
    biases = roles(family, loss="learned")
    ctx = context(family, biases)

    def estimator():
        return TruncatedUnroll(window=2, horizon=6, meta_batch=3, vmap=vmap)

    live = estimator()
    meta_step(ctx, live)
    saved = live.state_dict()
    meta_step(ctx, live)
    expected = flat_grads(biases.meta_parameters())
    resumed = estimator()
    resumed.load_state_dict(saved, context(family, biases))
    assert [r.state.step for r in resumed.runs] == [2, 2, 2]
    meta_step(ctx, resumed)
    assert expected.abs().max() > 1e-4
    assert torch.equal(flat_grads(biases.meta_parameters()), expected)
    for a, b in zip(live.runs, resumed.runs):
        for k, v in a.state.params.items():
            assert torch.equal(b.state.params[k], v)
