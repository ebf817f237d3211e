"""Cheap tests that reject a candidate before it is trained: the filter contract.

A filter maps a list of candidate role modules to one verdict each: ``None`` (keep it),
the reason it is rejected (a string: the worst fitness, no training run), or an
:class:`Equivalent` (the fitness of an already evaluated candidate it behaves like, no
training run). Skipping the training run is where filters save time. A filter with a
``tell(candidates, fitness)`` method hears the fitness of the candidates that were
trained. A filter that only makes sense for one role names it in :attr:`Filter.role`,
and :class:`~learnreg.estimators.Evolution` refuses it for a search of another role.

Filters are registered components of kind ``filter`` (the loss role's live in
:mod:`learnreg.losses.search`: ``taylor_invariant``, ``prediction_descent``).
"""

from __future__ import annotations

from dataclasses import dataclass

from learnreg import components
from learnreg.estimators.base import MetaContext


@dataclass
class Equivalent:
    """Verdict: the candidate behaves like one already trained; reuse its fitness."""

    fitness: float
    reason: str


class Filter:
    """Base class: ``filter(candidates, ctx) -> [None, a reason, or an Equivalent, ...]``.

    Attributes:
        role: the role whose candidates this filter understands (None: any role).
    """

    role: str | None = None

    def __call__(self, candidates: list, ctx: MetaContext) -> list[str | Equivalent | None]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def make_filter(spec: str | dict | Filter) -> Filter:
    """A filter from its registered name, ``{_component_: name, **kwargs}``, or itself."""
    if isinstance(spec, Filter):
        return spec
    return components.instantiate("filter", spec)
