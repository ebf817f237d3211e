"""One table of every named component: tasks, models, losses, optimizers, estimators...

A config or an exported bias names a component in one of three ways, and no other:

* a registered name (``_component_: neural``), learnreg's own or one registered in code
  with :func:`register` (also by its ``module.Class`` path);
* a dotted path to a *class* of an explicitly listed torch module that derives from that
  module's base (:data:`DOTTED_CLASSES`: ``torch.optim.AdamW``, ``torch.nn.Tanh``...);
* a class under a package the user allowed in code with :func:`allow_module`, deriving
  from one of the same bases.

The check runs on the name alone, before anything beyond a listed module is imported,
and never admits a function: a file cannot run code (``torch.utils.collect_env.run``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

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
    "filter",
)

#: Modules whose classes a config may name by dotted path, and the base class they must
#: derive from. Only attributes of these exact modules, never their submodules.
DOTTED_CLASSES: dict[str, type] = {
    "torch.nn": nn.Module,
    "torch.optim": torch.optim.Optimizer,
    "torch.optim.lr_scheduler": torch.optim.lr_scheduler.LRScheduler,
}

#: Which listed modules each kind may name (kinds not listed: registered names only).
DOTTED_KINDS: dict[str, tuple[str, ...]] = {
    "model": ("torch.nn",),
    "loss": ("torch.nn",),
    "meta_optimizer": ("torch.optim",),
    "meta_lr_schedule": ("torch.optim.lr_scheduler",),
}

#: Packages allowed in code with :func:`allow_module` (their classes, never functions).
USER_MODULES: set[str] = set()


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
    """Allow configs to name, by dotted path, the classes under the package ``prefix`` that
    derive from ``torch.nn.Module``, ``torch.optim.Optimizer`` or ``LRScheduler``.

    Functions stay refused; to offer a function, :func:`register` it.
    """
    USER_MODULES.add(prefix)


def entries(kind: str | None = None) -> list[Entry]:
    _load_builtin_components()
    kinds = [kind] if kind else list(KINDS)
    return [e for k in kinds for e in sorted(_TABLE[k].values(), key=lambda e: e.name)]


def lookup(kind: str | None, name: str) -> Callable[..., Any]:
    """Resolve a component name: registered, or an allowed class's dotted path.

    Args:
        kind: the registry kind, or None for a spec nested in another component's
            arguments (then any kind's names and any allowed class are accepted).
        name: the ``_component_`` value.

    Raises:
        ConfigError: ``name`` is unknown or not allowed (naming the closest valid choice);
            nothing beyond an allowed module has been imported or called.
    """
    _load_builtin_components()
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a component name must be a non-empty string, got {name!r}")
    kinds = [kind] if kind is not None else list(KINDS)
    for k in kinds:
        if name in _TABLE[k]:
            return _TABLE[k][name].target
    if "." in name:
        for k in kinds:  # a registered component by its `module.Class` path
            for entry in _TABLE[k].values():
                if f"{entry.target.__module__}.{entry.target.__qualname__}" == name:
                    return entry.target
        return _allowed_class(kind, name)
    names = sorted({n for k in kinds for n in _TABLE[k]})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    what = kind or "component"
    raise ConfigError(
        f"unknown {what} {name!r}.{hint} Valid {what} names: {', '.join(names)} "
        "(or an allowed class's dotted path; see `learnreg list` and README, Security)."
    )


def _allowed_class(kind: str | None, path: str) -> type:
    """The class at ``path`` when an allow-list rule admits it; checks the module name
    before importing anything and the attribute (a class with the right base) after."""
    module_name, _, attr = path.rpartition(".")
    listed = DOTTED_KINDS.get(kind, ()) if kind is not None else tuple(DOTTED_CLASSES)
    user = any(module_name == m or module_name.startswith(m + ".") for m in USER_MODULES)
    if (module_name not in listed and not user) or attr.startswith("_"):
        raise ConfigError(_refusal(kind, path, "its module is not on the allow-list"))
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {kind or 'component'} {path!r}: {exc}") from None
    bases = (
        (DOTTED_CLASSES[module_name],) if module_name in listed else tuple(DOTTED_CLASSES.values())
    )
    if not (inspect.isclass(target) and issubclass(target, bases)):
        raise ConfigError(_refusal(kind, path, f"it is not a class deriving from {_names(bases)}"))
    return target


_BASE_NAMES = {
    nn.Module: "torch.nn.Module",
    torch.optim.Optimizer: "torch.optim.Optimizer",
    torch.optim.lr_scheduler.LRScheduler: "torch.optim.lr_scheduler.LRScheduler",
}


def _names(bases) -> str:
    return " or ".join(_BASE_NAMES[b] for b in bases)


def _refusal(kind: str | None, path: str, why: str) -> str:
    listed = DOTTED_KINDS.get(kind, ()) if kind is not None else tuple(DOTTED_CLASSES)
    rule = "".join(f"classes of {m} deriving from {_names([DOTTED_CLASSES[m]])}; " for m in listed)
    return (
        f"{kind or 'component'} {path!r} is not allowed ({why}). A file may name only "
        f"registered components (`learnreg list`); {rule}and what you register in code "
        "(learnreg.registry.register, or classes under learnreg.registry.allow_module). "
        "Never a function."
    )


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
