"""``learnreg eval RUN_DIR``: flatness and robustness of a finished run's meta-test models.

Reads the run's resolved ``config.yaml`` and the final parameters of every meta-test
model (``final/{learned,baseline}_seed{i}.safetensors``), rebuilds each model's task,
and reports test accuracy, the PGA loss increase of the training loss at each radius,
the gradient norm, the surrogate gap and FGSM (optionally PGD) accuracy. The results go
into ``summary.json`` under ``"eval"`` and into ``metrics.jsonl`` (and the console).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from learnreg import config as configlib
from learnreg.core.inner import InnerState
from learnreg.core.trainer import resolve_device
from learnreg.errors import CheckpointError
from learnreg.eval import robustness, sharpness
from learnreg.eval.metrics import evaluate_split, summarize
from learnreg.imports import import_recorded
from learnreg.tracking.atomic import atomic_write_bytes
from learnreg.tracking.export import load_state
from learnreg.tracking.loggers import JsonlLogger, strict_json

FINAL = re.compile(r"^(?P<tag>[a-z_]+)_seed(?P<seed>\d+)\.safetensors$")


def final_states(run_dir: Path) -> list[tuple[str, int, Path]]:
    """``(tag, seed, path)`` of every saved meta-test model, sorted."""
    found = []
    for path in sorted((run_dir / "final").glob("*.safetensors")):
        match = FINAL.match(path.name)
        if match:
            found.append((match["tag"], int(match["seed"]), path))
    if not found:
        raise CheckpointError(
            f"{run_dir}/final holds no meta-test models; run `learnreg run` to the end first"
        )
    return sorted(found, key=lambda t: (t[0], t[1]))


def evaluate_model(
    model,
    params,
    buffers,
    task,
    radii,
    pga_steps: int,
    fgsm_eps: float,
    pgd_steps: int,
    max_examples: int | None,
) -> dict[str, float]:
    """Every metric of one trained model (see the module docstring)."""
    state = InnerState(params, buffers, None)
    metrics = {
        f"test_{k}": v for k, v in evaluate_split(model, state, task.test, task.kind).items()
    }
    loss = sharpness.SplitLoss(model, params, buffers, task.train, task.kind, max_examples)
    metrics.update(sharpness.flatness(loss, radii, pga_steps))
    if task.kind == "classification":
        metrics[f"fgsm_{fgsm_eps:g}"] = robustness.fgsm_accuracy(
            model, params, buffers, task.test, fgsm_eps
        )
        if pgd_steps > 0:
            metrics[f"pgd_{fgsm_eps:g}"] = robustness.pgd_accuracy(
                model, params, buffers, task.test, fgsm_eps, steps=pgd_steps
            )
    return metrics


def evaluate_run(
    run_dir: str | Path,
    radii=sharpness.RADII,
    pga_steps: int = 20,
    fgsm_eps: float = 0.1,
    pgd_steps: int = 0,
    max_examples: int | None = 2048,
    console: bool = True,
) -> dict:
    """Evaluate every meta-test model of a finished run; update ``summary.json``.

    Args:
        run_dir: the run directory.
        radii: PGA radii.
        pga_steps: projected-gradient-ascent steps per radius.
        fgsm_eps: L∞ radius of FGSM (and PGD) in standardized input units.
        pgd_steps: PGD iterations (0: skip PGD).
        max_examples: training examples the flatness metrics use (a fixed subset).
        console: print a table.

    Returns:
        ``{tag: {"mean": {...}, "std": {...}, "per_seed": [...]}}`` per model role.
    """
    from learnreg.data.build import build_family

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir} is not a run directory (no config.yaml)")
    import_recorded(run_dir)  # the run's custom components (see learnreg.imports)
    cfg = configlib.load(run_dir / "config.yaml")
    device = resolve_device(cfg["device"])
    family = build_family(cfg)
    per_tag: dict[str, list[dict]] = {}
    logger = JsonlLogger(run_dir / "metrics.jsonl")
    try:
        for tag, seed, path in final_states(run_dir):
            task = family.meta_test_task(seed).to(device)
            model = task.build_model(0).to(device)
            params, buffers = load_state(path, device)
            expected = {k for k, _ in model.named_parameters()}
            if set(params) != expected:
                raise CheckpointError(
                    f"{path} does not match the run's meta-test model "
                    f"(parameters {sorted(params)[:3]}... vs {sorted(expected)[:3]}...)"
                )
            metrics = evaluate_model(
                model, params, buffers, task, radii, pga_steps, fgsm_eps, pgd_steps, max_examples
            )
            per_tag.setdefault(tag, []).append({"seed": seed, **metrics})
            logger.log({f"eval/{tag}/{k}": v for k, v in metrics.items()}, seed=seed)
    finally:
        logger.close()
    result = {tag: _aggregate(rows) for tag, rows in per_tag.items()}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    summary["eval"] = result
    atomic_write_bytes(summary_path, json.dumps(strict_json(summary), indent=2).encode())
    from learnreg.plots import plot

    plot(run_dir, names=["pga"])  # plots/pga.png, and to the run's W&B run when it has one
    if console:
        print(format_eval(result))
    return result


def _aggregate(rows: list[dict]) -> dict:
    names = [k for k in rows[0] if k != "seed"]
    stats = {k: summarize([r[k] for r in rows]) for k in names}
    return {
        "mean": {k: s["mean"] for k, s in stats.items()},
        "std": {k: s["std"] for k, s in stats.items()},
        "ci95": {k: s["ci95"] for k, s in stats.items()},  # Student-t, for n seeds
        "n": len(rows),
        "per_seed": rows,
    }


def format_eval(result: dict) -> str:
    """A markdown table: one row per model role, mean ± Student-t 95% half-width of each
    metric, with the number of seeds n in the header (no interval when n < 2)."""
    tags = list(result)
    names = list(result[tags[0]]["mean"])
    header = [f"{t} (n={result[t].get('n', len(result[t]['per_seed']))})" for t in tags]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(tags) + 1) + "|"]
    any_interval = False
    for name in names:
        cells = []
        for t in tags:
            ci = result[t].get("ci95", {}).get(name, math.nan)
            half = f" ± {ci:.2g}" if math.isfinite(ci) else ""
            any_interval |= bool(half)
            cells.append(f"{result[t]['mean'][name]:.4g}{half}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if any_interval:
        lines.append("(mean ± 95% Student-t half-width over n seeds)")
    return "\n".join(lines)
