"""A readable description of an exported bias that has no ``describe()`` of its own
(``learnreg describe`` on a neural loss, a learned optimizer, a custom role)."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from learnreg.eval.loss_shape import loss_profile

#: Target-class probabilities (classification) or residuals (regression) shown.
_SHOWN = 5


def describe_module(module: nn.Module, path: str | Path) -> str:
    """What a bias is, how it was built, how many meta-parameters it has and, for a loss,
    its value at a few points of its profile.

    Args:
        module: the rebuilt bias (:func:`learnreg.tracking.export.load_bias`).
        path: its export path (the ``.json`` beside it holds the component and metadata).

    Returns:
        A few lines of text.
    """
    doc = json.loads(Path(path).with_suffix(".json").read_text())
    role, args = doc.get("role", "?"), doc.get("args", {})
    shown = ", ".join(f"{k}={v}" for k, v in args.items())
    params = sum(p.numel() for p in module.parameters())
    lines = [
        f"{role}: {doc.get('component')} ({type(module).__name__}({shown}))",
        f"  {params:,} meta-parameter{'s' * (params != 1)} "
        f"in {len(list(module.parameters()))} tensor{'s' * (len(list(module.parameters())) != 1)}",
    ]
    meta = doc.get("metadata") or {}
    if meta:
        lines.append("  exported from " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    if role == "loss":
        lines += _loss_points(module, args)
    return "\n".join(lines)


def _loss_points(module: nn.Module, args: dict) -> list[str]:
    kind = args.get("kind", "classification")
    if kind not in ("classification", "regression"):
        return []
    count = args.get("num_classes", args.get("out_features", 2))
    try:
        grid, values = loss_profile(module, kind, int(count), points=_SHOWN)
    except Exception as exc:  # a custom loss with another contract: say so, don't fail
        return [f"  (no loss profile: {type(exc).__name__}: {exc})"]
    axis = "target-class probability p" if kind == "classification" else "residual r"
    cells = ", ".join(f"{g:.2f}: {v:.4g}" for g, v in zip(grid, values))
    return [f"  value against the {axis}: {cells}"]
