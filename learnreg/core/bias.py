"""The three roles' common base: a module that remembers how it was built, so it can be
exported (safetensors + JSON) and loaded back without pickles.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from torch import nn


class Bias(nn.Module):
    """Base class of learnable (or fixed) procedural biases: losses, optimizers, inits.

    Subclasses get ``self.init_args``: the constructor arguments (defaults filled in) of
    the outermost ``__init__``, which :func:`learnreg.tracking.export.save_bias` writes as
    JSON next to the tensors.
    """

    role: str = ""  # "loss", "optimizer" or "init"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if "init_args" not in self.__dict__:
                bound = inspect.signature(init).bind(self, *args, **kw)
                bound.apply_defaults()
                object.__setattr__(
                    self, "init_args", _plain({k: v for k, v in list(bound.arguments.items())[1:]})
                )
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def record_args(self, **args: Any) -> None:
        """Replace the recorded constructor arguments. A role built from a live object (a
        model) records what rebuilds it instead, such as parameter shapes, so that its
        export stays plain JSON."""
        object.__setattr__(self, "init_args", _plain(args))

    @property
    def is_learned(self) -> bool:
        return any(p.requires_grad for p in self.parameters())


def is_learned(module: nn.Module) -> bool:
    """Whether a role (a :class:`Bias` or a plain ``nn.Module``) has meta-parameters."""
    return any(p.requires_grad for p in module.parameters())


def adopt_role(module: nn.Module, role: str, args: dict[str, Any]) -> nn.Module:
    """Give a plain ``nn.Module`` built for ``role`` what an export needs: its role and
    the constructor arguments that rebuild it (a :class:`Bias` records its own).

    Args:
        module: the built role.
        role: ``loss``, ``optimizer`` or ``init``.
        args: the keyword arguments it was built with (JSON-plain values).

    Returns:
        ``module``, unchanged when it is a :class:`Bias` already.
    """
    if "init_args" not in module.__dict__:
        object.__setattr__(module, "init_args", _plain(args))
    if not getattr(module, "role", ""):
        object.__setattr__(module, "role", role)
    return module


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so arguments survive a JSON round trip unchanged."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Biases(nn.Module):
    """The three roles of one learning algorithm: its loss, optimizer and init.

    The meta-parameters are every parameter of the three roles that requires grad;
    fixed roles contribute none.
    """

    def __init__(self, loss: nn.Module, optimizer: nn.Module, init: nn.Module):
        super().__init__()
        self.loss, self.optimizer, self.init = loss, optimizer, init

    def roles(self) -> dict[str, nn.Module]:
        return {"loss": self.loss, "optimizer": self.optimizer, "init": self.init}

    def meta_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def learned_roles(self) -> dict[str, nn.Module]:
        """The roles that carry meta-parameters (the ones worth exporting)."""
        return {name: m for name, m in self.roles().items() if any(True for _ in m.parameters())}
