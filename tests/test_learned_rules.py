"""Learned update rules: meta-gradients vs finite differences, equivalence of the
functional and drop-in paths, precision, and the equations of their pieces."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_task
from torch import nn

from learnreg.core.bias import Biases
from learnreg.core.inner import InnerState, inner_loop, inner_step
from learnreg.core.objectives import TaskLoss
from learnreg.core.outer import OuterOptimizer
from learnreg.core.task import SingleTask
from learnreg.errors import ConfigError
from learnreg.estimators import MetaContext, TruncatedUnroll
from learnreg.inits import RandomInit
from learnreg.losses import CrossEntropy
from learnreg.models import MLP
from learnreg.optim import LearnedOptimizer
from learnreg.optimizers import LSTMRule, MetaSGD, MLPRule
from learnreg.optimizers.flat import segment_mean
from learnreg.optimizers.lstm import log_sign_preprocess


def _rule(kind: str):
    torch.manual_seed(0)
    if kind == "lstm":
        return LSTMRule(hidden=6, output_scale=0.1).double()
    rule = MLPRule(hidden=(8, 8), step_mult=0.05).double()
    with torch.no_grad():  # leave Adam: every layer must carry meta-gradient
        for p in rule.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return rule


def _context(task, rule):
    biases = Biases(CrossEntropy(), rule, RandomInit())
    params = biases.meta_parameters()
    outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
    return MetaContext(SingleTask(task), biases, TaskLoss(), outer, 0, torch.device("cpu"))


def _meta_loss(ctx, window):
    """The averaged meta-objective of a fresh run, without gradients."""
    run = ctx.new_run("meta_train", 0)
    total, state = 0.0, run.state
    with torch.no_grad():
        for _ in range(window):
            state, _ = inner_step(
                run.model, state, run.next_train(), ctx.biases.loss, ctx.biases.optimizer
            )
            total += ctx.objective(run.model, state, run.val.next(), run.task).item()
    return total / window


@pytest.mark.parametrize("kind", ["lstm", "mlp"])
def test_meta_gradient_matches_central_finite_differences(kind):
    task = tiny_task()
    rule = _rule(kind)
    ctx = _context(task, rule)
    window = 3
    unroll = TruncatedUnroll(window=window, horizon=window, average=True, fast_path=False)
    unroll.unroll(ctx, ctx.new_run("meta_train", 0))
    params = ctx.biases.meta_parameters()
    analytic = [p.grad.clone() for p in params]
    assert all(g.abs().max() > 1e-7 for g in analytic), "every meta-parameter tensor must matter"

    eps = 1e-6
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # random directions through all meta-parameters
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            up = _meta_loss(ctx, window)
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            down = _meta_loss(ctx, window)
            for p, d in zip(params, direction):
                p.add_(eps * d)
        numeric = (up - down) / (2 * eps)
        exact = sum((g * d).sum() for g, d in zip(analytic, direction)).item()
        assert exact == pytest.approx(numeric, rel=1e-5, abs=1e-9)
    for p, g in zip(params, analytic):  # and single coordinates of every tensor
        i = int(torch.argmax(g.abs()))
        with torch.no_grad():
            old = p.view(-1)[i].item()
            p.view(-1)[i] = old + eps
            up = _meta_loss(ctx, window)
            p.view(-1)[i] = old - eps
            down = _meta_loss(ctx, window)
            p.view(-1)[i] = old
        assert g.view(-1)[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("kind", ["lstm", "mlp", "meta_sgd"])
def test_drop_in_optimizer_follows_the_functional_inner_loop(kind):
    task = tiny_task()
    model = task.build_model(0)
    rule = MetaSGD(model=model, lr=0.1).double() if kind == "meta_sgd" else _rule(kind)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = InnerState(params, {}, rule.init(params))
    batches = [task.stream("train", 0).next() for _ in range(5)]
    with torch.no_grad():
        state = inner_loop(model, state, iter(batches), CrossEntropy(), rule, 5)

    twin = copy.deepcopy(model)
    opt = LearnedOptimizer(twin.parameters(), rule, chunk_size=7)  # chunking is invisible
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        opt.step()
    for name, p in twin.named_parameters():
        torch.testing.assert_close(p.detach(), state.params[name], rtol=1e-12, atol=1e-12)


def test_fresh_mlp_rule_is_adam():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4))
    twin = copy.deepcopy(model)
    learned = LearnedOptimizer(model.parameters(), "mlp")
    adam = torch.optim.Adam(twin.parameters(), lr=1e-3)
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    for _ in range(25):
        for net, opt in ((model, learned), (twin, adam)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_parameters_keep_float32_rule_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(torch.bfloat16)
    x, y = torch.randn(64, 6, dtype=torch.bfloat16), torch.randint(0, 3, (64,))
    opt = LearnedOptimizer(model.parameters(), "mlp", lr=20.0)
    # the first update equals the rule on float32 copies, cast to bfloat16
    F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    grad = torch.cat([p.grad.flatten() for p in model.parameters()]).float()
    param = torch.cat([p.detach().flatten() for p in model.parameters()]).float()
    rule = copy.deepcopy(opt.rule)
    expected = rule.apply_flat(
        grad, param, rule.init_flat(grad.numel(), torch.float32, "cpu"), [p.numel() for p in before]
    )
    opt.step()
    offset = 0
    for p, b in zip(model.parameters(), before):
        piece = expected[offset : offset + p.numel()].view_as(p)
        exact = b.float() + 20.0 * piece  # then rounded once to bfloat16 (half an ulp)
        torch.testing.assert_close(p.detach().float(), exact, rtol=2**-8, atol=1e-5)
        offset += p.numel()
    assert all(
        v.dtype == torch.float32
        for k, v in opt.state[next(model.parameters())].items()
        if k != "step"
    )
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # state survives a round trip without being cast to bfloat16
    opt2 = LearnedOptimizer(model.parameters(), "mlp", lr=20.0)
    opt2.load_state_dict(opt.state_dict())
    first = next(iter(model.parameters()))
    assert opt2.state[first]["m"].dtype == torch.float32
    assert torch.equal(opt2.state[first]["m"], opt.state[first]["m"])


def test_parameters_without_gradient_are_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = LearnedOptimizer(model.parameters(), "mlp", lr=10.0)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    frozen = model[2].weight
    state_before = {k: v.clone() for k, v in opt.state[frozen].items()}
    active_before = opt.state[model[0].weight]["m"].clone()
    value_before = frozen.detach().clone()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    frozen.grad = None
    opt.step()
    assert torch.equal(frozen, value_before)
    assert torch.equal(opt.state[frozen]["m"], state_before["m"])
    active = opt.state[model[0].weight]["m"]
    assert not torch.equal(active, active_before)


def test_lr_zero_leaves_parameters_unchanged():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    opt = LearnedOptimizer(model.parameters(), "lstm", lr=0.0)
    model(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_rule_resolution_errors_are_clear(tmp_path):
    model = nn.Linear(3, 2)
    with pytest.raises(ConfigError, match="registered rule name"):
        LearnedOptimizer(model.parameters(), "mpl")
    with pytest.raises(ConfigError, match="not a learned coordinatewise rule"):
        LearnedOptimizer(model.parameters(), "sgd")
    with pytest.raises(Exception, match="no learned optimizer"):
        LearnedOptimizer(model.parameters(), tmp_path)
    with pytest.raises(Exception, match="learned/optimizer.json"):
        LearnedOptimizer.from_run(tmp_path, model.parameters())
    rule = MetaSGD(shapes=[[2, 3]])
    with pytest.raises(ConfigError, match="parameter shapes"):
        rule.init(dict(model.named_parameters()))
    opt = LearnedOptimizer(model.parameters(), rule)
    model(torch.randn(4, 3)).sum().backward()
    with pytest.raises(ConfigError, match="parameter shapes"):
        opt.step()
    with pytest.raises(TypeError, match="FlatRule"):
        LearnedOptimizer(model.parameters(), nn.Linear(2, 2))


def test_log_sign_preprocessing_matches_the_paper():
    k = 10.0
    g = torch.tensor([2.0, -0.5, 1e-6, -1e-7, 0.0], dtype=torch.float64)
    out = log_sign_preprocess(g, k)
    for value, (a, b) in zip(g.tolist(), out.T.tolist()):
        if abs(value) >= math.exp(-k):
            assert a == pytest.approx(math.log(abs(value)) / k)
            assert b == math.copysign(1.0, value)
        else:
            assert a == -1.0
            assert b == pytest.approx(math.exp(k) * value)


def test_segment_mean_is_per_tensor():
    values = torch.tensor([1.0, 3.0, 10.0, 20.0, 30.0])
    torch.testing.assert_close(segment_mean(values, [2, 3]), torch.tensor([2, 2, 20, 20, 20.0]))


def test_rule_state_is_a_pytree_of_tensors_that_checkpoints():
    task = tiny_task()
    rule = _rule("lstm")
    ctx = _context(task, rule)
    run = ctx.new_run("meta_train", 0)
    unroll = TruncatedUnroll(window=2, horizon=4)
    unroll.unroll(ctx, run)
    saved = run.state_dict()
    assert all(isinstance(t, torch.Tensor) for t in saved["opt_leaves"])
    resumed = ctx.new_run("meta_train", 0)
    resumed.load_state_dict(saved)
    with torch.no_grad():
        a = inner_loop(run.model, run.state, iter(run.next_train, None), CrossEntropy(), rule, 3)
        b = inner_loop(
            resumed.model, resumed.state, iter(resumed.next_train, None), CrossEntropy(), rule, 3
        )
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])


@pytest.mark.parametrize("kind", ["lstm", "mlp"])
def test_meta_gradient_is_finite_when_gradients_are_exactly_zero(kind):
    """A dead ReLU or an all-zero tensor gives coordinates whose gradient is exactly 0;
    the rules' square roots must not turn them into NaN meta-gradients (backward of
    √v at v = 0)."""
    task = tiny_task()
    model = MLP((4,), 3, hidden=(6,), activation="relu").double()
    with torch.no_grad():
        model[1].weight[0].zero_()  # hidden unit 0 is dead: its gradients are exactly 0
        model[1].bias[0] = -1.0
        model[3].bias.zero_()  # an all-zero tensor (its RMS is 0)
    task.model_fn = lambda: copy.deepcopy(model)
    rule = _rule(kind)
    ctx = _context(task, rule)
    TruncatedUnroll(window=3, horizon=3, fast_path=False).unroll(ctx, ctx.new_run("meta_train", 0))
    for p in ctx.biases.meta_parameters():
        assert torch.isfinite(p.grad).all()
