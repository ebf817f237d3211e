"""The loss role: fixed losses and learned ones, saved and loaded as plain criteria."""

from __future__ import annotations

from pathlib import Path

from learnreg.losses import composite, fixed, gp, neural, npbml, search, symbolic, taylor
from learnreg.losses.base import LossRole
from learnreg.losses.composite import TaskPlusLearned
from learnreg.losses.fixed import MSE, CrossEntropy, LabelSmoothing, SparseLSR
from learnreg.losses.gp import GeneticProgramming
from learnreg.losses.neural import NeuralLoss, SmoothLeakyReLU
from learnreg.losses.npbml import NPBMLLoss
from learnreg.losses.symbolic import SymbolicLoss
from learnreg.losses.taylor import TaylorLoss


def save(loss: LossRole, path: str | Path, metadata: dict | None = None) -> Path:
    """Export a loss as ``path.safetensors`` + ``path.json``."""
    from learnreg.tracking.export import save_bias

    return save_bias(loss, path, metadata)


def load(path: str | Path, device: str = "cpu") -> LossRole:
    """Load an exported loss as an ``nn.Module`` criterion: ``loss(pred, target)``."""
    from learnreg.tracking.export import load_bias

    return load_bias(path, role="loss", device=device)


__all__ = [
    "composite",
    "fixed",
    "neural",
    "npbml",
    "symbolic",
    "taylor",
    "gp",
    "search",
    "GeneticProgramming",
    "LossRole",
    "MSE",
    "CrossEntropy",
    "LabelSmoothing",
    "SparseLSR",
    "NeuralLoss",
    "NPBMLLoss",
    "TaskPlusLearned",
    "SmoothLeakyReLU",
    "SymbolicLoss",
    "TaylorLoss",
    "save",
    "load",
]
