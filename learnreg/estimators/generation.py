"""One generation of a search, as data: its candidates, what is logged about them and the
metrics the search reports (:class:`~learnreg.estimators.evolution.Evolution`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("learnreg.search")

STATUSES = ("evaluated", "cached", "equivalent", "rejected", "discarded")


@dataclass
class Candidate:
    """One genome's journey through a generation."""

    genome: object
    key: str | None
    fitness: float = math.nan
    status: str = "pending"  # evaluated, cached, equivalent, rejected or discarded
    reason: str = ""
    state: dict | None = None  # the candidate's tensors (after local search, if any)


def log_rejections(generation: int, candidates: list[Candidate], describe: Callable) -> None:
    """Log every rejected (info) and discarded (warning) candidate with its reason."""
    for c in candidates:
        if c.status in ("rejected", "discarded"):
            level = logging.WARNING if c.status == "discarded" else logging.INFO
            log.log(
                level,
                "generation %d: %s %s: %s",
                generation,
                c.status,
                describe(c.genome),
                c.reason,
            )


def generation_metrics(
    candidates: list[Candidate], best_fitness: float, evaluated_before: float
) -> dict[str, float]:
    """The ``search/`` metrics of a generation.

    Args:
        candidates: the generation's candidates, judged.
        best_fitness: the best fitness found so far (this generation included).
        evaluated_before: candidates trained in the earlier generations.
    """
    count = {s: sum(c.status == s for c in candidates) for s in STATUSES}
    scores = [c.fitness for c in candidates if math.isfinite(c.fitness)]
    return {
        "search/best_fitness": best_fitness,
        "search/generation_best": min(scores, default=math.nan),
        "search/mean_fitness": sum(scores) / len(scores) if scores else math.nan,
        **{f"search/{s}": float(n) for s, n in count.items()},
        "search/total_evaluated": float(evaluated_before + count["evaluated"]),
    }


def log_population(logger, generation: int, candidates: list[Candidate], describe: Callable):
    """The generation as a ``search/population`` table, for loggers that keep tables."""
    if logger is None or not hasattr(logger, "log_table"):
        return
    rows = [
        [
            generation,
            i,
            describe(c.genome),
            c.fitness if math.isfinite(c.fitness) else None,
            c.status,
            c.reason,
        ]
        for i, c in enumerate(candidates)
    ]
    columns = ["generation", "candidate", "genome", "fitness", "status", "reason"]
    logger.log_table("search/population", columns, rows, meta_step=generation)
