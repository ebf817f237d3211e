"""Export learned biases as safetensors + JSON and load them back without unpickling.

A bias at ``learned/loss`` is two files: ``loss.safetensors`` (its tensors) and
``loss.json`` (role, registered component name and constructor arguments). Loading
rebuilds the module through the registry (so only allow-listed code runs) and loads the
tensors strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from learnreg import registry
from learnreg.errors import CheckpointError, ConfigError
from learnreg.tracking.atomic import atomic_write_bytes

FORMAT = "learnreg-bias"
VERSION = 1


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_suffix(".json"), path.with_suffix(".safetensors")


def component_name(module: nn.Module, role: str) -> str:
    for entry in registry.entries(role):
        if entry.target is type(module):
            return entry.name
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def save_bias(module: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``module`` (a :class:`~learnreg.core.bias.Bias`) to ``path``.{json,safetensors}.

    Returns:
        The JSON path.
    """
    role = getattr(module, "role", "")
    if not role or "init_args" not in module.__dict__:
        raise TypeError(f"{type(module).__name__} is not a learnreg Bias; cannot export it")
    meta_path, tensor_path = _paths(path)
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(tensor_path, safetensors.torch.save(tensors))
    description = module.describe() if hasattr(module, "describe") else repr(module)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "role": role,
        "component": component_name(module, role),
        "args": module.init_args,
        "description": description,
        "metadata": metadata or {},
    }
    atomic_write_bytes(meta_path, json.dumps(doc, indent=2).encode())
    return meta_path


def load_bias(path: str | Path, role: str | None = None, device: str = "cpu") -> nn.Module:
    """Rebuild a bias saved by :func:`save_bias`.

    Args:
        path: the stem, the ``.json`` or the ``.safetensors`` path.
        role: expected role (``"loss"``...); a mismatch is an error.
        device: where to put the tensors.

    Raises:
        CheckpointError: missing, corrupt or incompatible files.
    """
    meta_path, tensor_path = _paths(path)
    for p in (meta_path, tensor_path):
        if not p.is_file():
            raise CheckpointError(
                f"{p} not found: an exported bias is a .json and a .safetensors file side by side"
            )
    try:
        doc = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{meta_path} is not valid JSON ({exc}); re-export the bias"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a learnreg bias description")
    if doc.get("version") != VERSION:
        raise CheckpointError(
            f"{meta_path} has format version {doc.get('version')}; this learnreg reads version {VERSION}"
        )
    if role is not None and doc.get("role") != role:
        raise CheckpointError(f"{meta_path} holds a {doc.get('role')!r} bias, not a {role!r}")
    try:
        module = registry.lookup(doc["role"], doc["component"])(**doc["args"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(
            f"{meta_path}: cannot rebuild {doc.get('component')!r}: {exc}"
        ) from None
    try:
        tensors = safetensors.torch.load_file(str(tensor_path), device=device)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(
            f"{tensor_path} is corrupt or truncated ({exc}); re-export the bias"
        ) from None
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{tensor_path} does not match {doc['component']!r}: {exc}") from None
    return module.to(device)


def save_state(state, path: str | Path) -> None:
    """Write an inner state's parameters and buffers (``param.``/``buffer.`` prefixed)."""
    tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in state.params.items()}
    tensors.update({f"buffer.{k}": v.detach().cpu().contiguous() for k, v in state.buffers.items()})
    atomic_write_bytes(Path(path), safetensors.torch.save(tensors))


def load_state(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Read ``(params, buffers)`` written by :func:`save_state`.

    Raises:
        CheckpointError: missing or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        tensors = safetensors.torch.load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is corrupt or truncated ({exc})") from None
    params = {k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}
    buffers = {k[len("buffer.") :]: v for k, v in tensors.items() if k.startswith("buffer.")}
    return params, buffers
