"""Components: building a ``{_component_: name, **kwargs}`` spec into an object.

A spec names a registered component (or an allow-listed dotted path) and its keyword
arguments. :func:`check_component` validates the name, the argument names and their
scalar types against the constructor's signature, so a typo fails when the config is
loaded, not halfway through a run; :func:`instantiate` builds the object, filling the
arguments it accepts from the run context (the task, the model, the device...).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from learnreg import registry
from learnreg.errors import ConfigError

COMPONENT = "_component_"


def normalize_component(value: Any, where: str) -> dict:
    if isinstance(value, str):
        return {COMPONENT: value}
    if not isinstance(value, dict) or COMPONENT not in value:
        raise ConfigError(
            f"{where} must name a component: `{where}: {{_component_: NAME, ...}}`, got {value!r}"
        )
    return value


def check_component(kind: str, spec: dict, where: str) -> None:
    """Validate a component spec's name and keyword arguments against its signature.

    Specs nested in the arguments (an estimator's ``searcher``) are checked against the
    allow-list too, so no name in a file is imported or called before it is allowed.
    """
    check_nested(spec, where)
    target = registry.lookup(kind, spec[COMPONENT])
    params, hints = _signature(target)
    args = {k: v for k, v in spec.items() if k != COMPONENT}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        _check_args_hook(target, args, where)
        return
    accepted = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key, value in spec.items():
        if key == COMPONENT:
            continue
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where}: {spec[COMPONENT]!r} has no argument {key!r}.{hint} "
                f"Valid arguments: {', '.join(sorted(accepted - set(CONTEXT_NAMES))) or '(none)'}."
            )
        _check_type(f"{where}.{key}", value, hints.get(key))
        _check_range(f"{where}.{key}", key, value)
    _check_args_hook(target, args, where)


#: Integer arguments that count something (a size, a number of layers or examples):
#: zero or negative is always a mistake, whichever component takes them.
POSITIVE_ARGS = frozenset(
    {"batch_size", "hidden", "width", "channels", "blocks", "depth", "layers"}
    | {"ways", "shots", "queries", "meta_batch", "window", "population", "val_batch"}
    | {"fitness_steps", "fitness_seeds", "max_batch"}
)
#: Seeds feed torch, numpy and scikit-learn generators; numpy's take [0, 2**32).
SEED_RANGE = (0, 2**32 - 1)


def check_seed(where: str, value: Any) -> None:
    """Refuse a seed outside the range every generator accepts."""
    if isinstance(value, int) and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ConfigError(
            f"{where} must be a seed between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {value}"
        )


def _check_range(where: str, key: str, value: Any) -> None:
    if key == "seed" or key.endswith("_seed"):
        check_seed(where, value)
    elif key in POSITIVE_ARGS:
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and v < 1:
                raise ConfigError(f"{where} must be >= 1 (a positive count), got {value!r}")


def _check_args_hook(target, args: dict, where: str) -> None:
    """A component class may define ``check_args(**kwargs)``, refusing argument
    combinations its signature cannot express; it runs when the config is loaded."""
    hook = getattr(target, "check_args", None) if inspect.isclass(target) else None
    if hook is None:
        return
    try:
        hook(**args)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_nested(spec: dict, where: str) -> None:
    """Refuse any dotted ``_component_`` path nested in ``spec``'s arguments that the
    allow-list does not admit (the spec's own name is checked against its kind by the
    caller). Plain nested names are left to their owner, which resolves them from a fixed
    table (an estimator's ``filters``); only a dotted path can reach a module."""
    stack = [(f"{where}.{k}", v) for k, v in spec.items() if k != COMPONENT]
    while stack:
        at, value = stack.pop()
        if isinstance(value, dict):
            if "." in str(value.get(COMPONENT, "")):
                try:
                    registry.lookup(None, value[COMPONENT])
                except ConfigError as exc:
                    raise ConfigError(f"{at}: {exc}") from None
            stack.extend((f"{at}.{k}", v) for k, v in value.items() if k != COMPONENT)
        elif isinstance(value, list):
            stack.extend((f"{at}[{i}]", v) for i, v in enumerate(value))


#: Constructor arguments filled from the run context when a config leaves them out.
CONTEXT_NAMES = (
    "task",
    "num_classes",
    "kind",
    "input_shape",
    "in_features",
    "out_features",
    "device",
    "params",
    "model",
    "optimizer",
    "total_steps",
)


def instantiate(kind: str, spec: dict | str, /, **context: Any) -> Any:
    """Build a component from its spec; arguments named like context keys are injected.

    Args:
        kind: registry kind (``"loss"``, ``"model"``...).
        spec: ``{"_component_": name, **kwargs}`` or a bare name.
        **context: values offered to the constructor (only those it accepts are passed).
    """
    return builder(kind, spec, **context)()


def builder(kind: str, spec: dict | str, /, **context: Any) -> Callable[[], Any]:
    """A validated, resolved constructor call for ``spec``, to build the component many
    times (a model per task) without re-checking the spec each time."""
    spec = normalize_component(spec, kind)
    check_component(kind, spec, where=kind)
    target = registry.lookup(kind, spec[COMPONENT])
    kwargs = {k: v for k, v in spec.items() if k != COMPONENT}
    params, _ = _signature(target)
    for name, value in context.items():
        if name not in kwargs and name in params:
            kwargs[name] = value

    def build() -> Any:
        try:
            return target(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"cannot build {kind} {spec[COMPONENT]!r}: {exc}") from None

    return build


def _signature(target):
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return {}, {}
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward refs: skip type checks, keep name checks
        hints = {}
    return dict(sig.parameters), hints


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Reject obviously wrong scalar types (a string where a float is expected...)."""
    if hint is None or value is None:
        return
    if isinstance(value, float) and value != value:
        raise ConfigError(f"{where} is NaN; give a number")
    if typing.get_origin(hint) is typing.Literal and value not in typing.get_args(hint):
        choices = [str(a) for a in typing.get_args(hint)]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint_text = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}.{hint_text}")
    allowed = _scalar_types(hint)
    if allowed is None:
        return
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, tuple(allowed)) or (float in allowed and isinstance(value, int))
    if not ok:
        names = " or ".join(sorted(t.__name__ for t in allowed))
        raise ConfigError(f"{where} must be {names}, got {value!r} ({type(value).__name__})")


def _scalar_types(hint: Any) -> set[type] | None:
    """The plain types a hint admits, or None when it admits anything we don't check."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        out: set[type] = set()
        for arg in typing.get_args(hint):
            sub = _scalar_types(arg)
            if sub is None:
                return None
            out |= sub
        return out
    if hint is type(None):
        return {type(None)}
    if origin in (list, tuple):
        return {list, tuple}
    if origin is typing.Literal:
        return {type(a) for a in typing.get_args(hint)}
    if hint in (int, float, str, bool):
        return {hint}
    return None
