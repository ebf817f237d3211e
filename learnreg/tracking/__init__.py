"""Tracking: loggers (jsonl, console, W&B), checkpoints, run-directory locks."""

from learnreg.tracking.checkpoint import load_checkpoint, save_checkpoint
from learnreg.tracking.lock import RunLock
from learnreg.tracking.loggers import ConsoleLogger, JsonlLogger, Logger, MultiLogger, WandbLogger

__all__ = [
    "load_checkpoint",
    "save_checkpoint",
    "RunLock",
    "ConsoleLogger",
    "JsonlLogger",
    "Logger",
    "MultiLogger",
    "WandbLogger",
]
