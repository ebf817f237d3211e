"""Metric values as strict JSON: tensors to numbers, non-finite floats to strings."""

from __future__ import annotations

import math
from typing import Any


def json_number(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf; keep them visible as strings
    return value


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string, recursively."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return json_number(value)
