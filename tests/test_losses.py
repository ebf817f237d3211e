"""Fixed and neural losses: values, gradients, the SparseLSR sign, export round trips."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from learnreg import losses
from learnreg.errors import CheckpointError
from learnreg.losses import MSE, CrossEntropy, LabelSmoothing, NeuralLoss, SparseLSR


def _target_logit_grad(loss, logits, target):
    logits = logits.clone().requires_grad_()
    loss(logits, target).backward()
    return logits.grad.gather(-1, target.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("xi", [0.05, 0.1, 0.3])
def test_sparse_lsr_target_gradient_equals_label_smoothing(xi):
    torch.manual_seed(0)
    logits, target = torch.randn(16, 7, dtype=torch.float64) * 3, torch.randint(0, 7, (16,))
    sparse = _target_logit_grad(SparseLSR(xi), logits, target)
    full = _target_logit_grad(LabelSmoothing(xi), logits, target)
    torch.testing.assert_close(sparse, full)
    # Closed form: (p_t - (1 - xi + xi / C)) / N.
    p_t = logits.softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(sparse, (p_t - (1 - xi + xi / 7)) / 16)


def test_sparse_lsr_pushes_confidence_down_at_high_target_probability():
    logits = torch.tensor([[12.0, 0.0, 0.0, 0.0]], dtype=torch.float64)  # p_t ~ 1
    target = torch.tensor([0])
    assert _target_logit_grad(SparseLSR(0.1), logits, target).item() > 0  # descent lowers the logit
    assert _target_logit_grad(CrossEntropy(), logits, target).item() < 0  # CE keeps pushing it up


def test_sparse_lsr_value_matches_the_equation():
    logits, target, xi, c = (
        torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64),
        torch.tensor([0]),
        0.2,
        3,
    )
    p = logits.softmax(-1)[0]
    expected = -((1 - xi + xi / c) * p[0].log() + (xi * (c - 1) / c) * ((1 - p[0]) / (c - 1)).log())
    torch.testing.assert_close(SparseLSR(xi)(logits, target), expected)


def test_sparse_lsr_stays_finite_at_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    value = SparseLSR(0.1)(logits, torch.tensor([0, 0]))
    assert torch.isfinite(value)


def test_fixed_losses_match_torch():
    logits, target = torch.randn(5, 4), torch.randint(0, 4, (5,))
    torch.testing.assert_close(CrossEntropy()(logits, target), F.cross_entropy(logits, target))
    pred, y = torch.randn(5, 2), torch.randn(5, 2)
    torch.testing.assert_close(MSE()(pred, y), F.mse_loss(pred, y))


def test_neural_loss_shares_one_network_across_classes():
    torch.manual_seed(0)
    loss = NeuralLoss("classification", 3, hidden=(4,), activation="relu")
    logits, target = torch.randn(6, 3), torch.randint(0, 3, (6,))
    p, onehot = logits.softmax(-1), F.one_hot(target, 3).float()
    manual = sum(
        loss.net(torch.stack([p[:, c], onehot[:, c]], -1)).squeeze(-1) for c in range(3)
    ).mean()
    torch.testing.assert_close(loss(logits, target), manual)
    assert loss(logits, target) >= 0  # softplus output


def test_neural_loss_rejects_shape_mismatch():
    loss = NeuralLoss("classification", 3)
    with pytest.raises(ValueError, match="logits"):
        loss(torch.randn(4, 3), torch.randint(0, 3, (5,)))
    with pytest.raises(ValueError, match="probability targets"):
        loss(torch.randn(4, 3), torch.rand(4, 5))
    with pytest.raises(ValueError, match="same shape"):
        NeuralLoss("regression", 1)(torch.randn(4, 1), torch.randn(4))


def test_learned_loss_round_trip(tmp_path):
    torch.manual_seed(0)
    loss = NeuralLoss("classification", 10, hidden=(8, 8), activation="smooth_leaky_relu", beta=4.0)
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(torch.randn_like(p))
    path = losses.save(loss, tmp_path / "loss")
    meta = json.loads(path.read_text())
    assert meta["role"] == "loss" and meta["component"] == "neural" and meta["args"]["beta"] == 4.0
    loaded = losses.load(tmp_path / "loss")
    assert isinstance(loaded, NeuralLoss)
    logits, target = torch.randn(9, 10), torch.randint(0, 10, (9,))
    assert torch.equal(loaded(logits, target), loss(logits, target))


def test_loading_a_corrupt_or_foreign_bias_fails_clearly(tmp_path):
    loss = NeuralLoss("classification", 3)
    losses.save(loss, tmp_path / "loss")
    tensors = tmp_path / "loss.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        losses.load(tmp_path / "loss")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something-else"}))
    (tmp_path / "other.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a learnreg bias"):
        losses.load(tmp_path / "other")
    with pytest.raises(CheckpointError, match="not found"):
        losses.load(tmp_path / "missing")


def test_a_learned_loss_applies_to_another_class_count_term_by_term():
    torch.manual_seed(0)
    loss = NeuralLoss(
        "classification", 10, activation="smooth_leaky_relu", output="none", aggregation="mean"
    ).double()
    logits3, target = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 3, (6,))
    # 10 columns whose last 7 carry no probability: softmax of the first 3 is unchanged
    logits10 = torch.cat([logits3, torch.full((6, 7), -1e4, dtype=torch.float64)], 1)
    with pytest.warns(UserWarning, match="meta-trained on 10 classes is applied to 3"):
        terms3 = loss.terms(logits3, target)
    terms10 = loss.terms(logits10, target)
    torch.testing.assert_close(terms3, terms10[:, :3])
    torch.testing.assert_close(loss(logits3, target), terms3.mean(-1).mean())
    assert "applies to any class count" in loss.describe()


def test_neural_loss_reductions_and_probability_targets():
    torch.manual_seed(0)
    loss = NeuralLoss("classification", 4, aggregation="mean")
    logits, target = torch.randn(5, 4), torch.randint(0, 4, (5,))
    per_example = NeuralLoss(**{**loss.init_args, "reduction": "none"})
    per_example.load_state_dict(loss.state_dict())
    values = per_example(logits, target)
    assert values.shape == (5,)
    torch.testing.assert_close(loss(logits, target), values.mean())
    summed = NeuralLoss(**{**loss.init_args, "reduction": "sum"})
    summed.load_state_dict(loss.state_dict())
    torch.testing.assert_close(summed(logits, target), values.sum())
    onehot = F.one_hot(target, 4).float()
    torch.testing.assert_close(loss(logits, onehot), loss(logits, target))
    soft = 0.9 * onehot + 0.025  # label-smoothed rows
    manual = loss.net(torch.stack([logits.softmax(-1), soft], -1)).squeeze(-1).mean(-1).mean()
    torch.testing.assert_close(loss(logits, soft), manual)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        loss(logits, torch.tensor([0, 1, 2, 3, -1]))
    with pytest.raises(ValueError, match="loss.reduction='avg'"):
        NeuralLoss("classification", 4, reduction="avg")


def test_taylor_and_symbolic_losses_take_other_class_counts_and_soft_targets():
    from learnreg.losses import SymbolicLoss, TaylorLoss

    torch.manual_seed(0)
    for loss in (TaylorLoss("classification", 10), SymbolicLoss("classification", 10)):
        logits, target = torch.randn(6, 3), torch.randint(0, 3, (6,))
        with pytest.warns(UserWarning, match="applied to 3"):
            three = loss(logits, target)
        p, onehot = logits.softmax(-1), F.one_hot(target, 3).float()
        torch.testing.assert_close(three, loss.elementwise(onehot, p).sum(-1).mean())
        torch.testing.assert_close(loss(logits, onehot), three)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            loss(logits, torch.tensor([0, 1, 2, 3, 0, 0]))
