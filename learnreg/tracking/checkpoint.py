"""Checkpoints: atomic, fsynced, loaded without unpickling code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts written with
``torch.save`` through :func:`~learnreg.tracking.atomic.atomic_write_bytes` and read with
``torch.load(weights_only=True)``, which refuses any pickle that would construct an
arbitrary object. Tensors are stored on the CPU, so a run checkpointed on a GPU resumes
on a CPU and back.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import optree
import torch

import learnreg
from learnreg.errors import CheckpointError
from learnreg.tracking.atomic import atomic_torch_save

FORMAT = "learnreg-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a reader sees the old or the new file)."""
    cpu = optree.tree_map(
        lambda t: t.detach().cpu() if isinstance(t, torch.Tensor) else t, state, none_is_leaf=True
    )
    atomic_torch_save(
        {"format": FORMAT, "version": VERSION, "learnreg": learnreg.__version__, "state": cpu}, path
    )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, written by an
            incompatible version, or carries a pickle that is not plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line.upper()]
        if refused:  # the file names code to run: never load it
            raise CheckpointError(
                f"{path} was refused: it is not plain tensor data ({refused[0]}). Checkpoints "
                "are loaded without running code; only load files learnreg wrote."
            ) from None
        raise CheckpointError(
            f"{path} is corrupt or truncated (not a readable checkpoint). Delete it to restart "
            "from scratch, or start a new run directory."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({str(exc).splitlines()[0]}). Delete it to restart from "
            "the previous checkpoint, or start a new run directory."
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a learnreg checkpoint")
    if blob.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {blob.get('version')} (learnreg {blob.get('learnreg')}); this learnreg "
            f"({learnreg.__version__}) reads format {VERSION}. Re-run with the learnreg that wrote it, or start over."
        )
    return blob["state"]


def rng_state() -> dict:
    """The global RNG states (CPU and, when present, every CUDA device)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
