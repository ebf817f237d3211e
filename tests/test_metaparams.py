"""Meta-parameters as values (core/metaparams.py), the population mechanism
(core/population.py) and the estimator contract (an estimate applied by ``meta_step``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_task

from learnreg.core import metaparams, population
from learnreg.core.bias import Biases
from learnreg.core.estimator import Estimate, Estimator, MetaContext, meta_step
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import SingleTask
from learnreg.inits import RandomInit
from learnreg.losses import NeuralLoss
from learnreg.optimizers import SGD


def _biases():
    torch.manual_seed(0)
    loss = NeuralLoss("classification", 3, hidden=(4,), activation="smooth_leaky_relu").double()
    return Biases(loss, SGD(lr=0.1), RandomInit())


def _pred_target():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])


def test_meta_parameters_are_the_live_learned_parameters_by_role():
    biases = _biases()
    named = metaparams.meta_parameters(biases)
    assert list(named) == ["loss"]  # SGD(lr) and RandomInit carry no meta-parameters
    assert [id(p) for p in named["loss"].values()] == [id(p) for p in biases.meta_parameters()]
    snapshot = metaparams.values_of(biases)
    assert all(not t.requires_grad for t in snapshot["loss"].values())


def test_call_at_evaluates_a_role_at_other_values_without_touching_it():
    biases, (pred, y) = _biases(), _pred_target()
    before = copy.deepcopy(biases.loss.state_dict())
    values = {"loss": {n: v + 0.5 for n, v in metaparams.values_of(biases)["loss"].items()}}
    moved = copy.deepcopy(biases)
    with torch.no_grad():
        for n, p in moved.loss.named_parameters():
            p.copy_(values["loss"][n])
    got = metaparams.call_at(biases, values, lambda: biases.loss(pred, y))
    assert torch.equal(got, moved.loss(pred, y))
    assert not torch.equal(got, biases.loss(pred, y))
    assert all(torch.equal(v, before[k]) for k, v in biases.loss.state_dict().items())


def test_call_at_under_vmap_equals_a_loop_and_gradients_reach_the_values():
    biases, (pred, y) = _biases(), _pred_target()
    base = metaparams.values_of(biases)
    g = torch.Generator().manual_seed(2)
    members = [
        {
            "loss": {
                n: v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                for n, v in base["loss"].items()
            }
        }
        for _ in range(4)
    ]
    f = lambda v: metaparams.call_at(biases, v, biases.loss, pred, y)  # noqa: E731
    batched = population.map_members(f, members)
    looped = torch.stack([f(m) for m in members])
    assert batched.shape == (4,)
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    # autograd through the values equals autograd through the module's own parameters
    leaves = {"loss": {n: v.clone().requires_grad_() for n, v in base["loss"].items()}}
    grads = torch.autograd.grad(f(leaves), list(leaves["loss"].values()))
    biases.loss.zero_grad()
    biases.loss(pred, y).backward()
    for grad, p in zip(grads, biases.loss.parameters()):
        torch.testing.assert_close(grad, p.grad, rtol=1e-12, atol=1e-12)


def test_flatten_and_unflatten_are_inverse():
    values = metaparams.values_of(_biases())
    vector = metaparams.flatten(values)
    assert vector.ndim == 1 and vector.numel() == sum(t.numel() for t in values["loss"].values())
    back = metaparams.unflatten(vector, values)
    assert all(torch.equal(back["loss"][n], values["loss"][n]) for n in values["loss"])
    with pytest.raises(ValueError):
        metaparams.unflatten(vector[:-1], values)


def test_map_members_falls_back_to_a_loop_for_members_of_different_shapes():
    members = [torch.ones(2), torch.ones(3)]
    out = population.map_members(lambda m, k: m.sum() * k, members, torch.tensor(2.0))
    assert torch.equal(out, torch.tensor([4.0, 6.0]))  # scalars stack again
    ragged = population.map_members(lambda m: m * 2, members)
    assert isinstance(ragged, list) and [t.tolist() for t in ragged] == [
        [2.0, 2.0],
        [2.0, 2.0, 2.0],
    ]
    assert population.unstack(population.stack([torch.zeros(2), torch.ones(2)]))[1].tolist() == [
        1.0,
        1.0,
    ]


class _ClosedForm(Estimator):
    """Returns a fixed gradient (or fixed values) so the trainer's application is checked."""

    def __init__(self, grads=None, states=None, meta_loss=1.0):
        self.grads, self.states, self.meta_loss = grads, states, meta_loss
        self.seen: list[dict] = []

    def estimate(self, ctx):
        return Estimate(self.grads, {"meta_loss": self.meta_loss}, self.states)

    def applied(self, ctx, info):
        self.seen.append(dict(info))


def _context(biases, lr=0.5):
    params = biases.meta_parameters()
    outer = OuterOptimizer(
        params, torch.optim.SGD(params, lr=lr), named=metaparams.meta_parameters(biases)
    )
    task = tiny_task("classification", c=3)
    return MetaContext(SingleTask(task), biases, None, outer, 0, torch.device("cpu"))


def test_meta_step_applies_an_estimate_with_the_outer_optimizer():
    biases = _biases()
    ctx = _context(biases)
    before = metaparams.values_of(biases)
    grads = {"loss": {n: torch.full_like(v, 0.2) for n, v in before["loss"].items()}}
    est = _ClosedForm(grads)
    metrics = meta_step(ctx, est)
    after = metaparams.values_of(biases)
    for n in before["loss"]:
        torch.testing.assert_close(after["loss"][n], before["loss"][n] - 0.5 * 0.2)
    assert metrics["skipped"] == 0.0 and est.seen[0]["skipped"] == 0.0
    norm = math.sqrt(sum(v.numel() for v in before["loss"].values()) * 0.2**2)
    assert metrics["grad_norm"] == pytest.approx(norm)


def test_meta_step_refuses_a_non_finite_estimate_and_loads_a_searchs_states():
    biases = _biases()
    ctx = _context(biases)
    before = metaparams.values_of(biases)
    bad = {"loss": {n: torch.full_like(v, math.nan) for n, v in before["loss"].items()}}
    est = _ClosedForm(bad)
    assert meta_step(ctx, est)["skipped"] == 1.0 and est.seen[0]["skipped"] == 1.0
    assert all(torch.equal(p, before["loss"][n]) for n, p in biases.loss.named_parameters())
    new_state = {k: torch.zeros_like(v) for k, v in biases.loss.state_dict().items()}
    meta_step(ctx, _ClosedForm(states={"loss": new_state}))
    assert all(torch.count_nonzero(v) == 0 for v in biases.loss.state_dict().values())


def test_an_unknown_gradient_name_is_refused():
    biases = _biases()
    ctx = _context(biases)
    with pytest.raises(KeyError, match="not a meta-parameter"):
        meta_step(ctx, _ClosedForm({"loss": {"nope": torch.zeros(1)}}))


def test_only_online_estimators_attach():
    from learnreg.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot adapt during meta-test"):
        _ClosedForm().attach(None)
