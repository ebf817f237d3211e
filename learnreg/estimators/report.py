"""What a search leaves in ``learned/``: the best candidate of the searched role as text
and a plot (when the role module offers ``describe()`` / ``plot(path)``), and the fitness
per generation as JSON and a plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib.figure import Figure

from learnreg.tracking.atomic import atomic_write_bytes, save_figure


def write_search_report(
    directory, module, history: list[dict], best: dict, role: str = "loss"
) -> list[Path]:
    """Write ``ROLE_formula.txt``, ``ROLE.png``, ``search_history.json`` and
    ``search_fitness.png`` under ``directory`` (``loss_formula.txt`` for a loss search).

    Args:
        directory: the run's ``learned/`` folder.
        module: the searched role's module (holding the best candidate).
        history: one dict of ``search/...`` metrics per generation.
        best: the best candidate's fitness, genome and generation.
        role: the searched role (names the files).

    Returns:
        The paths written.
    """
    directory = Path(directory)
    written = []
    if hasattr(module, "describe"):
        text = module.describe() + "\n"
        if best:
            text += f"validation fitness {best['fitness']:.6g} (generation {best['generation']}); genome {best['genome']}\n"
        path = directory / f"{role}_formula.txt"
        atomic_write_bytes(path, text.encode())
        written.append(path)
    if hasattr(module, "plot"):
        written.append(module.plot(directory / f"{role}.png"))
    summary = {
        "best": {k: v for k, v in best.items() if k != "state"},
        "generations": [{k: _plain(v) for k, v in record.items()} for record in history],
    }
    path = directory / "search_history.json"
    atomic_write_bytes(path, json.dumps(summary, indent=2).encode())
    written.append(path)
    if history:
        written.append(plot_fitness(history, directory / "search_fitness.png"))
    return written


def plot_fitness(history: list[dict], path) -> Path:
    """Best-so-far, generation-best and generation-mean fitness against the generation."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    generations = [r["generation"] for r in history]
    for key, label, style in (
        ("search/best_fitness", "best so far", "-"),
        ("search/generation_best", "generation best", "--"),
        ("search/mean_fitness", "generation mean", ":"),
    ):
        ax.plot(generations, [r[key] for r in history], style, label=label)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (validation objective, lower is better)")
    ax.legend()
    return save_figure(fig, path)


def _plain(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value
