"""Evaluation: task metrics, flatness (sharpness) and adversarial robustness."""

from learnreg.eval.metrics import evaluate_split, summarize

__all__ = ["evaluate_split", "summarize"]
