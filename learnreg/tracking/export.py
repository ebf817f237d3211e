"""Export learned biases as safetensors + JSON and load them back without unpickling.

A bias at ``learned/loss`` is two files: ``loss.safetensors`` (its tensors) and
``loss.json`` (role, registered component name and constructor arguments). Loading
validates both files (schema, allow-list, safetensors header) before it rebuilds the
module through the registry, then loads the tensors strictly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from learnreg import registry
from learnreg.components import COMPONENT, check_component
from learnreg.core.bias import Bias
from learnreg.errors import CheckpointError, ConfigError
from learnreg.tracking.atomic import atomic_write_bytes, storage_error

FORMAT = "learnreg-bias"
VERSION = 1
ROLES = ("loss", "optimizer", "init")


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
    try:
        meta_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, meta_path.parent) from None
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
    """Rebuild a bias saved by :func:`save_bias`, validating both files first.

    The JSON description is checked against its schema and the allow-list (a registered
    :class:`~learnreg.core.bias.Bias` class of that role), its arguments against the
    constructor's signature, and the safetensors header (read as bytes) against the
    tensor names and shapes the component has, probed on the ``meta`` device, before
    the component is built or any tensor is read.

    Args:
        path: the stem, the ``.json`` or the ``.safetensors`` path.
        role: expected role (``"loss"``...); a mismatch is an error.
        device: where to put the tensors.

    Raises:
        CheckpointError: missing, corrupt, incompatible or not allowed files.
    """
    meta_path, tensor_path = _paths(path)
    for p in (meta_path, tensor_path):
        if not p.is_file():
            raise CheckpointError(
                f"{p} not found: an exported bias is a .json and a .safetensors file side by side"
            )
    doc = _read_description(meta_path, role)
    target = _bias_class(meta_path, doc)
    header = read_safetensors_header(tensor_path)
    try:
        with torch.device("meta"):  # shapes only: no memory, no tensor read
            probe = target(**doc["args"])
    except Exception:  # a constructor meta tensors cannot run: the real build checks
        probe = None
    if probe is not None:
        _match_header(tensor_path, header, probe.state_dict(), doc["component"])
    try:
        module = target(**doc["args"])
    except Exception as exc:  # noqa: BLE001 - any failure of an allowed constructor
        raise CheckpointError(
            f"{meta_path}: cannot rebuild {doc['component']!r} from its args ({exc}); "
            "re-export the bias"
        ) from None
    _match_header(tensor_path, header, module.state_dict(), doc["component"])
    try:
        tensors = safetensors.torch.load_file(str(tensor_path), device=device)
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise CheckpointError(
            f"{tensor_path} is corrupt or truncated ({exc}); re-export the bias"
        ) from None
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{tensor_path} does not match {doc['component']!r}: {exc}") from None
    return module.to(device)


_KEYS = {"format", "version", "role", "component", "args", "description", "metadata"}
_MAX_JSON_BYTES = 16 << 20


def _read_description(meta_path: Path, role: str | None) -> dict:
    """The parsed ``.json`` of a bias, checked against its schema."""
    if meta_path.stat().st_size > _MAX_JSON_BYTES:
        raise CheckpointError(f"{meta_path} is larger than a bias description can be")
    try:
        doc = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{meta_path} is not valid JSON ({exc}); re-export the bias"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not a learnreg bias description")
    if doc.get("version") != VERSION or isinstance(doc.get("version"), bool):
        raise CheckpointError(
            f"{meta_path} has format version {doc.get('version')}; this learnreg reads version {VERSION}"
        )
    problems = [f"unknown key {k!r}" for k in doc if k not in _KEYS]
    if doc.get("role") not in ROLES:
        problems.append(f"role must be one of {', '.join(ROLES)}, got {doc.get('role')!r}")
    if not isinstance(doc.get("component"), str):
        problems.append(f"component must be a name, got {doc.get('component')!r}")
    args = doc.get("args")
    if not isinstance(args, dict) or COMPONENT in args:
        problems.append(f"args must be a mapping of constructor arguments, got {args!r}")
    if not isinstance(doc.get("description", ""), str):
        problems.append("description must be a string")
    if not isinstance(doc.get("metadata", {}), dict):
        problems.append("metadata must be a mapping")
    if problems:
        raise CheckpointError(
            f"{meta_path} is malformed: {'; '.join(problems)}; re-export the bias"
        )
    if role is not None and doc["role"] != role:
        raise CheckpointError(f"{meta_path} holds a {doc['role']!r} bias, not a {role!r}")
    return doc


def _bias_class(meta_path: Path, doc: dict) -> type:
    """The allow-listed class a description names, with its arguments checked."""
    spec = {COMPONENT: doc["component"], **doc["args"]}
    try:
        target = registry.lookup(doc["role"], doc["component"])
        check_component(doc["role"], spec, where=str(meta_path))
    except ConfigError as exc:
        raise CheckpointError(f"{meta_path}: refused: {exc}") from None
    bias = isinstance(target, type) and issubclass(target, Bias) and target.role == doc["role"]
    # A plain nn.Module that code the user imported registered for this role (docs/extending.md).
    registered = (
        isinstance(target, type)
        and issubclass(target, nn.Module)
        and any(entry.target is target for entry in registry.entries(doc["role"]))
    )
    if not (bias or registered):
        raise CheckpointError(
            f"{meta_path}: refused: {doc['component']!r} is not a learnreg {doc['role']} bias "
            "class; an exported bias names a Bias subclass or an nn.Module registered for its "
            f"role (`learnreg list {doc['role']}`)"
        )
    return target


#: Bytes per element of each safetensors dtype.
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2}
_DTYPE_BYTES |= {"F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, from its header alone, after checking
    that every tensor's byte range fits the file.

    Raises:
        CheckpointError: a truncated file or a malformed header.
    """
    size = path.stat().st_size

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is corrupt or truncated ({why}); re-export the bias")

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad("no header")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, 100 << 20):
            raise bad(f"header of {length} bytes in a {size}-byte file")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise bad("header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("header is not a mapping")
    data_bytes, shapes, ranges = size - 8 - length, {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = dtype in _DTYPE_BYTES and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0
                for n in (*shape, begin, end)
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise bad(f"tensor {name!r} has a malformed entry {info!r}")
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype] or end > data_bytes:
            raise bad(f"tensor {name!r} does not fit the file")
        shapes[name] = tuple(shape)
        ranges.append((begin, end))
    ranges.sort()
    if any(a[1] > b[0] for a, b in zip(ranges, ranges[1:])):
        raise bad("tensors overlap")
    return shapes


def _match_header(path: Path, header: dict, state: dict, component: str) -> None:
    expected = {k: tuple(v.shape) for k, v in state.items()}
    if header != expected:
        missing = sorted(set(expected) - set(header))
        extra = sorted(set(header) - set(expected))
        wrong = sorted(k for k in set(header) & set(expected) if header[k] != expected[k])
        raise CheckpointError(
            f"{path} does not match {component!r}: missing {missing}, unexpected {extra}, "
            f"wrong shapes {[(k, header[k], expected[k]) for k in wrong]}; re-export the bias"
        )


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
