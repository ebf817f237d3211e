"""YAML run configurations: loading, presets and ``key=value`` overrides.

A run config is a YAML mapping. Component sections hold ``_component_`` (a registered
name or an allow-listed dotted path) and the component's keyword arguments; every other
section has a fixed set of keys (:data:`~learnreg.validation.SCHEMA`). What a config may
hold, and the checks that refuse the rest, live in :mod:`learnreg.validation`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import yaml

from learnreg.components import COMPONENT
from learnreg.errors import ConfigError
from learnreg.imports import import_modules
from learnreg.validation import SCHEMA, validate

__all__ = [
    "SCHEMA",
    "PRESETS",
    "config_changes",
    "default_run_dir",
    "dump",
    "load",
    "parse_yaml",
    "read_yaml",
    "resolve_preset",
    "source_name",
]


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading numbers as people write them: YAML 1.1 needs a dot in a
    float, so ``1e-3`` would be the string ``"1e-3"``; here it is the float 0.001."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """YAML text to Python values, safely (no object tags), with ``1e-3`` a float."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# The presets ship with the source tree (`learnreg run adalfl/digits_mlp`).
PRESETS = Path(__file__).resolve().parent.parent / "configs"


def load(
    source: str | Path | Mapping,
    overrides: list[str] | None = None,
    imports: list[str] | None = None,
) -> dict:
    """Load a config (path, YAML text mapping or dict), apply overrides, fill defaults, validate.

    The modules under the config's ``imports`` key (and ``imports``) are imported first,
    so the components they register can be named (see :mod:`learnreg.imports`).

    Args:
        source: a YAML file path, or an already-parsed mapping.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML scalars/lists.
        imports: more modules to import (``learnreg run --import``), recorded in the
            resolved config's ``imports`` after those the config lists.

    Returns:
        The resolved config as plain dicts and lists.
    """
    if isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
        from_file = []  # a mapping is built by the caller's own code
    else:
        source = resolve_preset(source)
        raw = read_yaml(source)
        from_file = raw.get("imports") or []
    for item in overrides or []:
        apply_override(raw, item)
    names = raw.get("imports") or []
    if not isinstance(names, list) or not isinstance(from_file, list):
        raise ConfigError(f"imports must be a list of module names, got {names!r}")
    raw["imports"] = names + [m for m in imports or [] if m not in names]
    # Names typed by the user (--import, overrides) are trusted; the file's are checked.
    typed = [m for m in raw["imports"] if m not in from_file or m in (imports or [])]
    import_modules(typed)
    import_modules([m for m in raw["imports"] if m not in typed], named_in=source)
    return validate(raw)


def resolve_preset(name: str | Path) -> Path:
    """A config path, or a preset name relative to ``configs/`` (``adalfl/digits_mlp``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (PRESETS / path, PRESETS / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    return path  # read_yaml reports it as missing


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} not found (neither a file nor a preset under "
            f"{PRESETS}). Try `learnreg list preset`."
        )
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(
            f"{path}: cannot read it as a YAML text file ({exc}); pass a UTF-8 YAML config"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"{path}: malformed YAML: {exc}. Fix the syntax at the position shown."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config must be a YAML mapping of sections, got {type(data).__name__}."
        )
    return data


def apply_override(cfg: dict, item: str) -> None:
    """Set ``cfg[a][b] = value`` from ``"a.b=value"`` (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, _, text = item.partition("=")
    try:
        value = parse_yaml(text) if text != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    parts = key.strip().split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and depth == 0 and isinstance(SCHEMA.get(part), dict):
            child = node[part] = copy.deepcopy(SCHEMA[part])  # `optimizer.lr=...` edits the default
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str):  # `loss=neural` then `loss.hidden=32`
            child = node[part] = {COMPONENT: child}
        elif not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    if parts[-1] == "" or any(p == "" for p in parts):
        raise ConfigError(f"override {item!r}: empty key")
    if (
        parts[-1] in node
        and isinstance(node[parts[-1]], dict)
        and isinstance(value, str)
        and len(parts) == 1
    ):
        value = {COMPONENT: value}  # `loss=taylor` replaces the component
    node[parts[-1]] = value


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def config_changes(previous: dict, cfg: dict) -> list[str]:
    """The dotted keys whose values differ between a run directory's config and ``cfg``.

    Where a run executes (``device``, ``threads``) may change between a checkpoint and its
    resume; keys a config written by an older learnreg lacks count as their defaults."""
    previous = {**SCHEMA, **previous}
    return [
        key for key in _differences(previous, cfg) if key.split(".")[0] not in ("device", "threads")
    ]


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            found
            for key in list(a) + [k for k in b if k not in a]
            for found in _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        ]
    return [] if a == b else [prefix.rstrip(".")]


def source_name(config) -> str | None:
    """A config's name: its preset (``adalfl/digits_mlp``) or file stem; None for a dict."""
    if isinstance(config, Mapping):
        return None
    path = resolve_preset(config).resolve()
    if path.is_relative_to(PRESETS):
        return str(path.relative_to(PRESETS).with_suffix(""))
    return path.stem


def default_run_dir(cfg: dict) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg['method']}-{cfg['task']['_component_']}-{stamp}"
