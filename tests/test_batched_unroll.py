"""The vmapped meta-batch is the Python loop over tasks, batched: same meta-gradient,
same meta-losses, same inner states."""

from __future__ import annotations

import pytest
import torch
from fewshot_util import context, digits_family, flat_grads, roles, sine_family

from learnreg.core.estimator import meta_step
from learnreg.errors import ConfigError
from learnreg.estimators import TruncatedUnroll
from learnreg.estimators.batch_start import check_vmappable
from learnreg.models import BatchStatNorm


def _step(family, biases, vmap, meta_batch=3, window=3, **kw):
    ctx = context(family, biases)
    unroll = TruncatedUnroll(window=window, horizon=window, meta_batch=meta_batch, vmap=vmap, **kw)
    metrics = meta_step(ctx, unroll)
    return metrics, flat_grads(biases.meta_parameters()), unroll.runs


@pytest.mark.parametrize(
    "setting",
    [
        ("digits", dict(init="maml", optimizer="sgd", loss="ce")),
        ("digits", dict(init="film", optimizer="precond", loss="learned_film", mode="warp")),
        ("digits", dict(init="maml", optimizer="precond", loss="learned", mode="kronecker")),
        ("sine", dict(init="film", optimizer="precond", loss="learned_film", mode="diagonal")),
    ],
    ids=["maml", "npbml-warp", "kronecker", "sine-npbml"],
)
@pytest.mark.parametrize("average", [False, True])
def test_vmapped_meta_batch_equals_the_loop(setting, average):
    name, spec = setting
    film = spec["init"] == "film"
    family = digits_family(film=film) if name == "digits" else sine_family(film=film)
    results = [
        _step(family, roles(family, **spec), vmap, average=average) for vmap in (False, True)
    ]
    (m_loop, g_loop, runs_loop), (m_vmap, g_vmap, runs_vmap) = results
    assert m_vmap["meta_loss"] == pytest.approx(m_loop["meta_loss"], rel=1e-12)
    assert g_loop.abs().max() > 1e-4
    torch.testing.assert_close(g_vmap, g_loop, rtol=1e-9, atol=1e-13)
    for a, b in zip(runs_loop, runs_vmap):
        assert a.state.step == b.state.step == 3
        for k in a.state.params:
            torch.testing.assert_close(b.state.params[k], a.state.params[k], rtol=1e-12, atol=1e-14)
            assert not b.state.params[k].requires_grad


def test_runs_of_different_shapes_fall_back_to_the_loop():
    """Sine episodes with different support sizes cannot be stacked; the step still works."""
    a, b = sine_family(shots=4), sine_family(shots=6)

    class Mixed(type(a)):
        def sample(self, index):
            return (a if index % 2 else b).sample(index)

    family = Mixed(a.family)
    grads = {}
    for vmap in (False, True):
        _, grads[vmap], runs = _step(family, roles(family), vmap, meta_batch=2)
        assert len({len(r.task.train) for r in runs}) == 2
    torch.testing.assert_close(grads[True], grads[False])


def test_batch_stat_norm_is_batch_norm_without_running_statistics():
    torch.manual_seed(0)
    ours, reference = BatchStatNorm(4).double(), torch.nn.BatchNorm2d(4, track_running_stats=False)
    reference = reference.double()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), reference.parameters()):
            p.copy_(torch.randn_like(p))
            q.copy_(p)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-12, atol=1e-12)
    assert not list(ours.buffers())


def test_models_that_update_buffers_are_refused_with_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(ConfigError, match="running statistics.*vmap=false"):
        check_vmappable(model)
