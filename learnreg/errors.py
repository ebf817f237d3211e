"""Errors that name the problem and the fix; the CLI prints them without a traceback."""


class LearnregError(Exception):
    """Base class of errors meant for the user (CLI exit status 2)."""


class ConfigError(LearnregError, ValueError):
    """A config file, override or component argument is invalid."""


class DataError(LearnregError, FileNotFoundError):
    """A dataset is missing, unreadable or malformed."""


class CheckpointError(LearnregError):
    """A checkpoint or exported bias is corrupt, incompatible or unsafe."""


class RunLockedError(LearnregError):
    """Another process is writing into the same run directory."""


class NumericalError(LearnregError, FloatingPointError):
    """Training diverged: too many consecutive non-finite meta-losses or gradients."""


class ShapeError(LearnregError, ValueError):
    """Predictions, targets or inputs have shapes that do not fit together."""


class StorageError(LearnregError, OSError):
    """A run directory cannot be created or written (not a directory, read-only, full)."""


class DistributedError(LearnregError):
    """Another process of a multi-process run died or cannot be reached."""
