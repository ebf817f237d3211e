"""NPBML as published: warp layers start as the identity, warp and FiLM parameters are
meta-parameters only, only the configured parameters adapt, the inductive + transductive
loss is what its formula says, and meta-gradients through all of it are the derivative."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fewshot_util import Float64, context, episodic_meta_loss

from learnreg.core.bias import Biases
from learnreg.core.estimator import meta_step
from learnreg.core.inner import frozen_names, init_state, inner_loop
from learnreg.data import FewShotEpisodes
from learnreg.errors import ConfigError
from learnreg.estimators import TruncatedUnroll
from learnreg.inits import LearnedInit
from learnreg.losses import CrossEntropy, NPBMLLoss
from learnreg.models import MLP, NPBMLMLP, Conv4, NPBMLConv4, adapt_only
from learnreg.optimizers import SGD, PreconditionedSGD

STEPS = 2


def _npbml_family(transductive=True, film=True):
    def model(input_shape, out_features):
        return NPBMLConv4(input_shape, out_features, hidden=4, blocks=3, film=film).double()

    return Float64(FewShotEpisodes("digits", 3, 2, 3, transductive=transductive, model=model))


def _copy_backbone(npbml: torch.nn.Module, backbone: torch.nn.Module, mapping: dict) -> None:
    with torch.no_grad():
        for dst, src in mapping.items():
            npbml.get_parameter(dst).copy_(backbone.get_parameter(src))


def test_fresh_npbml_conv4_computes_its_backbone():
    """Identity warp kernels and zero FiLM generators: the conv4 backbone, to rounding."""
    torch.manual_seed(0)
    backbone, npbml = Conv4((1, 8, 8), 5, hidden=6), NPBMLConv4((1, 8, 8), 5, hidden=6)
    mapping = {f"block{b}.{k}": f"{b}.{k}" for b in (1, 2) for k in ("0.weight", "0.bias")}
    mapping.update({f"block{b}.1.{k}": f"{b}.1.{k}" for b in (1, 2) for k in ("weight", "bias")})
    mapping.update({f"block{b}.conv.{k}": f"{b}.0.{k}" for b in (3, 4) for k in ("weight", "bias")})
    mapping.update(
        {f"block{b}.warp.norm.{k}": f"{b}.1.{k}" for b in (3, 4) for k in ("weight", "bias")}
    )
    mapping.update({"head.weight": "6.weight", "head.bias": "6.bias"})
    _copy_backbone(npbml, backbone, mapping)
    x = torch.randn(12, 1, 8, 8)
    torch.testing.assert_close(npbml(x), backbone(x), rtol=1e-5, atol=1e-6)
    # and it is not the identity once the warp kernel moves
    with torch.no_grad():
        w = npbml.get_parameter("block3.warp.map.weight")
        w.add_(0.3 * torch.randn_like(w))  # (a pure rescaling would be normalized away)
    assert not torch.allclose(npbml(x), backbone(x), atol=1e-3)


def test_fresh_npbml_mlp_computes_its_backbone():
    torch.manual_seed(0)
    backbone, npbml = MLP((1,), 1, hidden=(7, 7)), NPBMLMLP((1,), 1, hidden=(7, 7))
    mapping = {f"block{b}.conv.{k}": f"{2 * b - 1}.{k}" for b in (1, 2) for k in ("weight", "bias")}
    mapping.update({"head.weight": "5.weight", "head.bias": "5.bias"})
    _copy_backbone(npbml, backbone, mapping)
    x = torch.randn(9, 1)
    torch.testing.assert_close(npbml(x), backbone(x), rtol=1e-6, atol=1e-7)


def _episode_run(family, loss, optimizer, steps=3):
    task = family.representative()
    model = task.build_model(0)
    init = LearnedInit(model).double()
    state = init_state(model, init, optimizer, task)
    stream = task.stream("train", 0)
    end = inner_loop(model, state, iter(stream.next, None), loss, optimizer, steps)
    return model, init, state, end, task


def test_warp_and_film_get_meta_gradients_but_the_inner_loop_leaves_them():
    family = _npbml_family()
    model, init, start, end, task = _episode_run(
        family, NPBMLLoss("classification", 3).double(), SGD(0.1, momentum=0.9, nesterov=True)
    )
    frozen = frozen_names(model)
    assert {k for k in start.params if ".warp." in k or ".film." in k} <= frozen
    assert sorted(set(start.params) - frozen) == [
        "block2.conv.bias",
        "block2.conv.weight",
        "block3.conv.bias",
        "block3.conv.weight",
        "head.bias",
        "head.weight",
    ]
    for k in start.params:
        if k in frozen:
            assert end.params[k] is start.params[k]  # not even a copy
        else:
            assert not torch.equal(end.params[k], start.params[k])
    x, y = task.val.x, task.val.y
    F.cross_entropy(torch.func.functional_call(model, end.params, (x,)), y).backward()
    grads = dict(zip(init.names, (p.grad for p in init.theta)))
    for k in frozen:
        if ".warp." in k or ".film." in k:
            assert grads[k] is not None and grads[k].abs().max() > 0, k


@pytest.mark.parametrize("optimizer", ["sgd", "meta_sgd"])
def test_only_the_configured_parameters_adapt(optimizer):
    def model(input_shape, out_features):
        return adapt_only(
            input_shape, out_features, {"_component_": "conv4", "hidden": 4}, adapt=["2.*", "6.*"]
        ).double()

    family = Float64(FewShotEpisodes("digits", 3, 2, 3, model=model))
    net = family.representative().build_model(0)
    opt = (
        SGD(0.1, momentum=0.9, nesterov=True)
        if optimizer == "sgd"
        else PreconditionedSGD(net, lr=0.1, mode="diagonal").double()
    )
    _, _, start, end, _ = _episode_run(family, CrossEntropy(), opt)
    for k in start.params:
        if k.startswith(("2.", "6.")):
            assert not torch.equal(end.params[k], start.params[k]), k
        else:
            assert torch.equal(end.params[k], start.params[k]), k


def test_an_adapt_pattern_naming_no_parameter_is_refused():
    with pytest.raises(ConfigError, match="matches no parameter"):
        adapt_only((1, 8, 8), 3, {"_component_": "conv4"}, adapt=["block9.*"])


def _by_hand(loss: NPBMLLoss, pred, target):
    """The published formula with boolean indexing (the module uses masks)."""
    lab = target != -100
    p, y = pred[lab], target[lab]
    ce = F.cross_entropy(p, y, reduction="none")
    onehot = F.one_hot(y, pred.shape[1]).to(pred.dtype)
    inductive = loss.inductive(torch.cat([p, onehot, ce[:, None]], 1)).mean()
    protos = torch.stack([p[y == c].mean(0) for c in range(pred.shape[1])])
    q = pred[~lab]
    pseudo = -(torch.cdist(q, protos) ** 2)
    soft = -(pseudo.softmax(-1) * q.log_softmax(-1)).sum(-1)
    transductive = loss.transductive(torch.cat([q, pseudo, soft[:, None]], 1)).mean()
    return ce.mean() + inductive + transductive


def test_npbml_loss_is_its_formula_and_starts_with_cross_entropy_gradients():
    torch.manual_seed(0)
    loss = NPBMLLoss("classification", 3).double()
    pred = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 1, 2, 0, 1, 2] + [-100] * 6)
    (g,) = torch.autograd.grad(loss(pred, target), pred)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(pred, target), pred)
    torch.testing.assert_close(g, g_ce, rtol=1e-12, atol=1e-14)
    assert g[6:].abs().max() == 0  # unlabelled rows: no gradient at initialization
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(0.3 * torch.randn_like(p))
    torch.testing.assert_close(loss(pred, target), _by_hand(loss, pred, target))
    (g,) = torch.autograd.grad(loss(pred, target), pred)
    assert g[6:].abs().max() > 1e-4  # the transductive term now shapes the query logits


def test_transductive_episodes_append_unlabelled_queries():
    plain = FewShotEpisodes("digits", 3, 2, 3).sample(4)
    trans = FewShotEpisodes("digits", 3, 2, 3, transductive=True).sample(4)
    torch.testing.assert_close(trans.train.x, torch.cat([plain.train.x, plain.val.x]))
    assert trans.train.y.tolist() == plain.train.y.tolist() + [-100] * 9
    torch.testing.assert_close(trans.val.x, plain.val.x)


def test_npbml_meta_gradients_match_central_finite_differences():
    """θ0 (warp, FiLM, adapted convolutions) and both loss networks, off their start."""
    family = _npbml_family()
    task = family.representative()
    model = task.build_model(0)
    torch.manual_seed(2)
    loss = NPBMLLoss("classification", 3, layers=2).double()
    biases = Biases(loss, SGD(0.1, momentum=0.9, nesterov=True), LearnedInit(model)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in biases.meta_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    ctx = context(family, biases)
    meta_step(ctx, TruncatedUnroll(window=STEPS, horizon=STEPS, meta_batch=2))
    names = dict(zip(biases.init.names, biases.init.theta))
    picks = [names[k] for k in names if ".warp." in k or ".film." in k or ".conv." in k]
    picks += list(loss.parameters())
    analytic, numeric = [], []
    for p in picks:
        i, eps = 0, 1e-6
        analytic.append(p.grad.view(-1)[i].item())
        with torch.no_grad():
            old = p.view(-1)[i].item()
            p.view(-1)[i] = old + eps
            up = episodic_meta_loss(ctx, [0, 1], STEPS)
            p.view(-1)[i] = old - eps
            down = episodic_meta_loss(ctx, [0, 1], STEPS)
            p.view(-1)[i] = old
        numeric.append((up - down) / (2 * eps))
    analytic, numeric = torch.tensor(analytic), torch.tensor(numeric, dtype=torch.float64)
    assert (analytic.abs() > 1e-7).float().mean() > 0.8
    torch.testing.assert_close(analytic.double(), numeric, rtol=1e-4, atol=1e-8)


def test_one_step_fast_path_holds_the_same_parameters_fixed():
    """The window-1 hypergradient path honours the model's adapt patterns exactly as the
    double-backward unroll does (online runs of a partially adapted model)."""
    from dataclasses import replace

    from conftest import tiny_task

    from learnreg.core.objectives import TaskLoss
    from learnreg.core.outer import OuterOptimizer
    from learnreg.core.task import SingleTask
    from learnreg.estimators import MetaContext
    from learnreg.inits import RandomInit
    from learnreg.losses import NeuralLoss

    base = tiny_task()
    masked = lambda: adapt_only((4,), 3, {"_component_": "mlp", "hidden": [6]}, ["3.*"]).double()  # noqa: E731
    task = replace(base, model_fn=masked)
    out = []
    for fast in (True, False):
        torch.manual_seed(0)
        loss = NeuralLoss("classification", 3, hidden=(5,), activation="smooth_leaky_relu").double()
        biases = Biases(loss, SGD(0.2, momentum=0.9), RandomInit())
        params = biases.meta_parameters()
        outer = OuterOptimizer(params, torch.optim.SGD(params, lr=0.0))
        ctx = MetaContext(SingleTask(task), biases, TaskLoss(), outer, 0, torch.device("cpu"))
        run = ctx.new_run("meta_train", 0)
        start = dict(run.state.params)
        unroll = TruncatedUnroll(window=1, horizon=None, fast_path=fast)
        for _ in range(2):
            ctx.outer.zero_grad()
            unroll.unroll(ctx, run)
        out.append(([p.grad.clone() for p in params], run.state.params, start))
    (g_fast, p_fast, s_fast), (g_slow, p_slow, _) = out
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for k in p_fast:
        torch.testing.assert_close(p_fast[k], p_slow[k], rtol=1e-12, atol=1e-14)
        assert torch.equal(p_fast[k], s_fast[k]) == (not k.startswith("3."))
