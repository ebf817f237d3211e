"""TaylorGLO: a loss that is a third-order Taylor polynomial in (target, prediction).

With ``x`` the one-hot target and ``y`` the softmax probability of one class, and centres
``(c_x, c_y)``, the polynomial keeps the six terms of the bivariate cubic expansion that
depend on ``y`` (the four terms in ``x`` alone have zero gradient and are dropped)::

    f(x, y) = a1·u + a2·u² + a3·u³ + a4·v·u + a5·v·u² + a6·v²·u,   u = y - c_y,  v = x - c_x

and the loss is ``-mean_batch Σ_classes f``. The 8 meta-parameters are
``θ = (c_x, c_y, a1, ..., a6)``; the zero vector (CMA-ES's starting point) is the zero loss.
All terms are in the *prediction* ``y``: the EvoMAL repository's TaylorGLO puts them in the
target, which leaves only three terms with a gradient (a defect not reproduced here).

References:
    Gonzalez & Miikkulainen, "Optimizing Loss Functions Through Multivariate Taylor
    Polynomial Parameterization", GECCO 2021 (arXiv 2002.00059).
    Gonzalez & Miikkulainen, "Improved Training Speed, Accuracy, and Data Utilization
    Through Loss Function Optimization" and the regularization analysis (arXiv 2010.00788).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from learnreg.losses.elementwise import ElementwiseLoss
from learnreg.registry import register

#: The meta-parameters in the order of ``TaylorLoss.theta``.
PARAMETER_NAMES = ("c_x", "c_y", "a1", "a2", "a3", "a4", "a5", "a6")


def taylor_polynomial(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """The polynomial ``f(x, y)`` elementwise (before negation); ``theta`` has 8 entries."""
    c_x, c_y, a1, a2, a3, a4, a5, a6 = theta.unbind(-1)
    u, v = y - c_y, x - c_x
    return u * (a1 + u * (a2 + a3 * u) + v * (a4 + a5 * u + a6 * v))


def derivative_coefficients(theta: Tensor) -> dict[str, Tensor]:
    """Coefficients of ``∂f/∂y`` written as a polynomial in (y, x).

    ``∂f/∂y = c1 + ch·y + chh·y² + chy·x·y + cy·x + cyy·x²`` (the names follow the
    official TaylorGLO runner, where ``h`` is the prediction and ``y`` the label).
    """
    c_x, c_y, a1, a2, a3, a4, a5, a6 = theta.unbind(-1)
    return {
        "c1": a1 - 2 * a2 * c_y + 3 * a3 * c_y**2 - a4 * c_x + 2 * a5 * c_x * c_y + a6 * c_x**2,
        "ch": 2 * a2 - 6 * a3 * c_y - 2 * a5 * c_x,
        "chh": 3 * a3,
        "chy": 2 * a5,
        "cy": a4 - 2 * a5 * c_y - 2 * a6 * c_x,
        "cyy": a6,
    }


def invariant_margin(theta: Tensor, num_classes: int) -> Tensor:
    """``(cy + cyy + chy/n) - (n - 2)·(c1 + ch/n + chh/n²)``; negative violates the invariant.

    The TaylorGLO runner's trainability filter: at the uniform prediction ``y = 1/n`` the
    derivative's part that separates the target class from the others must outweigh the
    common part, or training cannot move toward the target. A violating candidate gets the
    worst fitness without being trained, which is what makes the search cheaper.
    """
    c = derivative_coefficients(theta)
    n = float(num_classes)
    return (c["cy"] + c["cyy"] + c["chy"] / n) - (n - 2) * (c["c1"] + c["ch"] / n + c["chh"] / n**2)


def satisfies_invariant(theta: Tensor | Sequence[float], num_classes: int) -> bool:
    """True unless ``theta`` violates TaylorGLO's trainability invariant (see :func:`invariant_margin`)."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    return bool(invariant_margin(theta, num_classes) >= 0)


@register("loss", "taylor")
class TaylorLoss(ElementwiseLoss):
    """TaylorGLO's loss: a third-order Taylor polynomial with 8 meta-parameters.

    Classification: ``x`` one-hot target, ``y`` softmax probability; the loss is
    ``-mean_batch Σ_classes f(x, y)``. Regression (not in the paper, offered for
    completeness): ``x`` the target and ``y`` the raw prediction, same formula; the
    trainability invariant is defined for classification only.

    Args:
        kind: ``classification`` or ``regression`` (injected from the task).
        num_classes: classes, or regression outputs (injected).
        theta: initial ``(c_x, c_y, a1, ..., a6)``; default zeros (CMA-ES's start).
    """

    #: constructor arguments that only set parameter values (a population of TaylorLosses
    #: differing in them is evaluated as one vmapped module).
    value_args = ("theta",)

    def __init__(
        self,
        kind: Literal["classification", "regression"] = "classification",
        num_classes: int = 10,
        theta: Sequence[float] | None = None,
    ):
        super().__init__()
        values = [0.0] * len(PARAMETER_NAMES) if theta is None else [float(t) for t in theta]
        if len(values) != len(PARAMETER_NAMES):
            raise ValueError(
                f"theta needs {len(PARAMETER_NAMES)} values {PARAMETER_NAMES}, got {len(values)}"
            )
        self.kind, self.num_classes = kind, num_classes
        self.theta = nn.Parameter(torch.tensor(values))

    population_parameter = "theta"

    def population_key(self) -> tuple:
        """Every TaylorLoss of one kind is the same polynomial at other coefficients."""
        return (self.kind,)

    def elementwise(self, target: Tensor, prediction: Tensor) -> Tensor:
        """Each (class or output) element's contribution ``-f(x, y)`` to the loss."""
        return self.elementwise_at(self.theta, target, prediction)

    def elementwise_at(self, values: Tensor, target: Tensor, prediction: Tensor) -> Tensor:
        """:meth:`elementwise` at coefficients ``values`` (``(..., 8)``, leading dimensions
        broadcast against the elements')."""
        return -taylor_polynomial(values.to(prediction.dtype), target, prediction)

    def satisfies_invariant(self) -> bool:
        """Whether the current coefficients pass the trainability invariant (classification)."""
        return satisfies_invariant(self.theta.detach(), self.num_classes)

    def describe(self) -> str:
        """The polynomial with its coefficients, e.g. for ``learned/loss.json``."""
        values = dict(zip(PARAMETER_NAMES, self.theta.detach().tolist()))
        terms = ("u", "u^2", "u^3", "v*u", "v*u^2", "v^2*u")
        parts = [
            f"{'-' if a < 0 else '+'} {abs(a):.4g}*{t}"
            for a, t in zip((values[f"a{i}"] for i in range(1, 7)), terms)
            if a != 0
        ]
        if parts:  # the leading sign attaches to the first coefficient: "-2*u", "3*u"
            parts[0] = parts[0][2:] if parts[0][0] == "+" else "-" + parts[0][2:]
        body = " ".join(parts)
        centre = f"u = {_shifted('y', values['c_y'])}, v = {_shifted('x', values['c_x'])}"
        reduce = "class sum" if self.kind == "classification" else "output sum"
        return f"loss = -mean_batch {reduce} f, f = {body or '0'}; {centre}"


def _shifted(name: str, centre: float) -> str:
    return f"{name} - {centre:.4g}" if centre >= 0 else f"{name} + {-centre:.4g}"
