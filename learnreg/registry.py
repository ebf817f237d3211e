"""One table of every named component: tasks, models, losses, optimizers, estimators...

Configs name components by a short registered name (``_component_: neural``) or, for
anything not registered, by a dotted path inside an allow-listed package
(``_component_: torch.optim.AdamW``). Nothing outside the allow-list can be
instantiated from a config file, so a YAML file cannot run arbitrary code.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from learnreg.errors import ConfigError

KINDS = (
    "task",
    "model",
    "loss",
    "optimizer",
    "init",
    "objective",
    "estimator",
    "meta_optimizer",
    "meta_lr_schedule",
    "logger",
    "evaluator",
    "searcher",
)

#: Packages whose attributes a config may name by dotted path.
ALLOWED_MODULES: set[str] = {"learnreg", "torch", "torchvision", "torchopt"}


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    target: Callable[..., Any]
    description: str


_TABLE: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}


def _summary(doc: str) -> str:
    """A docstring's first sentence, even when it wraps over several lines."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def register(kind: str, name: str, description: str | None = None):
    """Class/function decorator adding a component to the table.

    Args:
        kind: one of :data:`KINDS`.
        name: the short name configs use.
        description: one line for ``learnreg list``; defaults to the docstring's first sentence.
    """
    if kind not in _TABLE:
        raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")

    def wrap(target):
        doc = description or _summary(target.__doc__ or "")
        _TABLE[kind][name] = Entry(name, kind, target, doc)
        return target

    return wrap


def partial(fn: Callable[..., Any], name: str, doc: str, /, **fixed: Any) -> Callable[..., Any]:
    """``fn`` with some keyword arguments fixed, keeping the signature and type hints of
    the others, so a config naming the result is validated like ``fn`` itself.

    Args:
        fn: the function to specialize.
        name: ``__name__`` of the result.
        doc: its docstring (the first line is its `learnreg list` description).
        **fixed: the arguments to fix.
    """
    signature = inspect.signature(fn)
    hints = typing.get_type_hints(fn)

    def bound(**kwargs: Any) -> Any:
        return fn(**fixed, **kwargs)

    bound.__signature__ = signature.replace(
        parameters=[p for n, p in signature.parameters.items() if n not in fixed]
    )
    bound.__annotations__ = {k: v for k, v in hints.items() if k not in fixed}
    bound.__name__ = bound.__qualname__ = name
    bound.__doc__ = doc
    return bound


def allow_module(prefix: str) -> None:
    """Allow configs to name components under the package ``prefix`` by dotted path."""
    ALLOWED_MODULES.add(prefix.split(".")[0] if "." not in prefix else prefix)


def entries(kind: str | None = None) -> list[Entry]:
    _load_builtin_components()
    kinds = [kind] if kind else list(KINDS)
    return [e for k in kinds for e in sorted(_TABLE[k].values(), key=lambda e: e.name)]


def lookup(kind: str, name: str) -> Callable[..., Any]:
    """Resolve a component name (registered or an allow-listed dotted path).

    Raises:
        ConfigError: naming the closest valid choice when ``name`` is unknown or not allowed.
    """
    _load_builtin_components()
    table = _TABLE[kind]
    if name in table:
        return table[name].target
    if "." in name:
        return _import_allowed(kind, name)
    close = difflib.get_close_matches(name, table.keys(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown {kind} {name!r}.{hint} Valid {kind} names: {', '.join(sorted(table))} "
        "(or a dotted path inside an allowed package; see `learnreg list`)."
    )


def _import_allowed(kind: str, path: str):
    if not any(path == m or path.startswith(m + ".") for m in ALLOWED_MODULES):
        raise ConfigError(
            f"{kind} {path!r} is outside the allowed packages ({', '.join(sorted(ALLOWED_MODULES))}). "
            "Register it with learnreg.registry.register or learnreg.registry.allow_module."
        )
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {kind} {path!r}: {exc}") from None


_LOADED = False


def _load_builtin_components() -> None:
    """Import the subpackages whose modules register components (once)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for pkg in (
        "learnreg.data",
        "learnreg.models",
        "learnreg.losses",
        "learnreg.optimizers",
        "learnreg.optim.teachers",
        "learnreg.inits",
        "learnreg.core.objectives",
        "learnreg.core.outer",
        "learnreg.estimators",
        "learnreg.tracking",
    ):
        importlib.import_module(pkg)
    from learnreg.imports import load_entry_points  # installed packages' components

    load_entry_points()
