"""TaylorGLO's loss: values and gradients against the explicit polynomial, the trainability
invariant's coefficients and verdicts, and the export round trip."""

from __future__ import annotations

import functools

import pytest
import torch

from learnreg import losses
from learnreg.core.objectives import TaskError
from learnreg.data import sklearn_task
from learnreg.estimators.evaluators import FitnessProblem, evaluate_group
from learnreg.inits import RandomInit
from learnreg.losses import TaylorLoss
from learnreg.losses.taylor import derivative_coefficients, invariant_margin, satisfies_invariant
from learnreg.models import MLP
from learnreg.optimizers import SGD


def explicit_taylor_loss(theta, logits, target):
    """-mean_batch sum_classes of the 6 monomials, written out term by term."""
    c_x, c_y, a1, a2, a3, a4, a5, a6 = theta
    y = logits.softmax(-1)
    x = torch.nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype)
    total = 0
    for k in range(logits.shape[-1]):
        u, v = y[:, k] - c_y, x[:, k] - c_x
        total = total + (
            a1 * u + a2 * u**2 + a3 * u**3 + a4 * v * u + a5 * v * u**2 + a6 * v**2 * u
        )
    return -total.mean()


def ce_expansion(c_y: float) -> list[float]:
    """The TaylorGLO parameters of cross-entropy's expansion x·log(y) around (0, c_y)."""
    return [0.0, c_y, 0.0, 0.0, 0.0, 1 / c_y, -1 / (2 * c_y**2), 0.0]


def test_values_and_gradients_match_the_explicit_polynomial():
    torch.manual_seed(0)
    theta = torch.randn(8, dtype=torch.float64)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (6,))
    loss = TaylorLoss(num_classes=5, theta=theta.tolist()).double()
    theta = loss.theta.detach().clone()  # float32-rounded at construction
    value = loss(logits, target)
    explicit_theta = theta.clone().requires_grad_()
    expected = explicit_taylor_loss(explicit_theta, logits, target)
    torch.testing.assert_close(value, expected)
    got = torch.autograd.grad(value, [logits, loss.theta])
    want = torch.autograd.grad(expected, [logits, explicit_theta])
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    # The loss is linear in a1..a6: d loss / d a_k is minus the mean class sum of term k.
    y = logits.detach().softmax(-1)
    x = torch.nn.functional.one_hot(target, 5).double()
    u, v = y - theta[1], x - theta[0]
    terms = [u, u**2, u**3, v * u, v * u**2, v**2 * u]
    closed = torch.stack([-t.sum(-1).mean() for t in terms])
    torch.testing.assert_close(got[1][2:], closed)


def test_gradients_pass_central_finite_differences():
    torch.manual_seed(1)
    target = torch.randint(0, 4, (5,))
    theta = (0.7 * torch.randn(8, dtype=torch.float64)).requires_grad_()
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)

    def fn(theta, logits):
        loss = TaylorLoss(num_classes=4).double()
        return torch.func.functional_call(loss, {"theta": theta}, (logits, target))

    assert torch.autograd.gradcheck(fn, (theta, logits))


def test_derivative_coefficients_reproduce_the_prediction_gradient():
    torch.manual_seed(2)
    theta = torch.randn(8, dtype=torch.float64)
    x = torch.rand(50, dtype=torch.float64)
    y = torch.rand(50, dtype=torch.float64, requires_grad=True)
    loss = TaylorLoss(theta=theta.tolist()).double()
    (dy,) = torch.autograd.grad(-loss.elementwise(x, y).sum(), y)  # elementwise() is -f
    c = derivative_coefficients(loss.theta.detach())
    poly = (
        c["c1"] + c["ch"] * y + c["chh"] * y**2 + c["chy"] * x * y + c["cy"] * x + c["cyy"] * x**2
    )
    torch.testing.assert_close(dy, poly.detach())


@pytest.mark.parametrize("c_y", [0.1, 0.5, 0.9])
def test_invariant_accepts_cross_entropy_like_losses(c_y):
    assert satisfies_invariant(ce_expansion(c_y), 10)
    assert TaylorLoss(theta=ce_expansion(c_y)).satisfies_invariant()


def test_invariant_accepts_the_squared_error_expansion():
    # -(x - y)^2 around (0, 0): a2 = -1 (on y^2) and a4 = 2 (on x*y).
    assert satisfies_invariant([0, 0, 0, -1, 0, 2, 0, 0], 10)


def test_invariant_rejects_a_known_untrainable_vector():
    ascent = [-v for v in ce_expansion(0.5)]  # gradient ascent on cross-entropy
    ascent[1] = 0.5  # same centre, negated coefficients
    assert float(invariant_margin(torch.tensor(ascent, dtype=torch.float64), 10)) < 0
    assert not satisfies_invariant(ascent, 10)


def test_invariant_verdicts_agree_with_training():
    """The accepted CE expansion trains a digits MLP; the rejected negation does not."""
    task = sklearn_task("digits", batch_size=64)
    task.model_fn = functools.partial(MLP, (64,), 10, hidden=[32])
    problem = FitnessProblem([task], [3], SGD(0.1), RandomInit(), TaskError(), steps=150)
    accepted = TaylorLoss(theta=ce_expansion(0.5))
    rejected_theta = [0.0, 0.5] + [-v for v in ce_expansion(0.5)[2:]]
    rejected = TaylorLoss(theta=rejected_theta)
    assert accepted.satisfies_invariant() and not rejected.satisfies_invariant()
    good, bad = evaluate_group(problem, [accepted, rejected])
    assert good.fitness < 0.2 < 0.8 < bad.fitness


def test_export_round_trip(tmp_path):
    loss = TaylorLoss(num_classes=7, theta=torch.randn(8).tolist())
    path = losses.save(loss, tmp_path / "loss")
    assert "loss = -mean_batch class sum" in path.read_text()
    loaded = losses.load(tmp_path / "loss")
    assert isinstance(loaded, TaylorLoss) and loaded.num_classes == 7
    logits, target = torch.randn(4, 7), torch.randint(0, 7, (4,))
    torch.testing.assert_close(loaded(logits, target), loss(logits, target))


def test_bad_theta_length_is_a_clear_error():
    with pytest.raises(ValueError, match="theta needs 8 values"):
        TaylorLoss(theta=[1.0, 2.0])
