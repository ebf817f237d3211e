"""Grids of runs: ``learnreg sweep CONFIG --param key=v1,v2 ... --out DIR``.

Every combination of the parameter values is one ordinary run directory under ``DIR``
(resumable like any run), all in one W&B group when W&B logging is on, and the results
land in one comparison table: ``DIR/comparison.md`` and ``DIR/comparison.csv``.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path

import yaml

from learnreg.errors import ConfigError


def parse_param(text: str) -> tuple[str, list]:
    """``"optimizer.lr=0.1,0.01"`` -> ``("optimizer.lr", [0.1, 0.01])`` (values as YAML)."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise ConfigError(f"--param {text!r} must look like key.sub=value1,value2")
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]


def grid(params: list[str]) -> list[dict]:
    """Every combination of the parameter values, as ``{key: value}`` dicts."""
    parsed = [parse_param(p) for p in params]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"a --param key is repeated: {keys}")
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in parsed))]


def point_name(point: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items()).replace("/", "_") or "default"


def sweep(
    config: str,
    params: list[str],
    out: str | Path,
    overrides: list[str] | None = None,
    wandb: bool = False,
    progress: bool = True,
    imports: list[str] | None = None,
) -> list[dict]:
    """Run the grid and write the comparison table.

    Args:
        config: a YAML path or preset.
        params: ``key=v1,v2`` strings; the grid is their product.
        out: the sweep directory (one run directory per point inside it).
        overrides: ``key=value`` overrides applied to every point.
        wandb: log every run to W&B, grouped under the sweep's directory name; when W&B
            is online, the grid runs as a W&B sweep (``wandb.sweep`` + a local agent).
        progress: show progress bars.
        imports: modules registering custom components (``--import``), recorded in
            every point's run directory.

    Returns:
        One row per point: the parameter values, the learned and baseline test metrics.
    """
    from learnreg.tracking.lock import check_run_dir
    from learnreg.tracking.wandb_logger import wandb_mode

    out = Path(out)
    check_run_dir(out)
    points = grid(params)
    if wandb and wandb_mode() == "online":
        rows = _wandb_sweep(config, params, points, out, overrides or [], progress, imports)
    else:
        rows = [
            _run_point(config, point, out, overrides or [], wandb, progress, imports)
            for point in points
        ]
    write_table(rows, out)
    return rows


def _run_point(
    config, point: dict, out: Path, overrides, wandb: bool, progress: bool, imports=None
) -> dict:
    """One grid point as an ordinary run directory; its row of the comparison table."""
    from learnreg.runner import run

    extra = [
        f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
        for k, v in point.items()
    ]
    if wandb:
        extra += ["logger.backends=[console,wandb]", f"logger.group={out.name}"]
    # Points that differ only in what is learned (a meta-lr, a loss network's width)
    # train the same tuned grid: the sweep's points share it (README "Sharing the grid").
    summary = run(
        config,
        [*overrides, *extra],
        out / point_name(point),
        progress,
        imports,
        tune_cache=out / "tuning_cache",
    )
    row = dict(point)
    row.update({f"learned_{m}": v for m, v in summary["test"].items()})
    row.update({f"baseline_{m}": v for m, v in summary.get("baseline", {}).get("test", {}).items()})
    row["seconds"] = round(summary["meta_train_seconds"] + summary["meta_test_seconds"], 1)
    return row


def _wandb_sweep(config, params, points, out: Path, overrides, progress, imports) -> list[dict]:
    """The grid as a W&B sweep (online only): W&B's controller hands out the points, a
    local agent runs each as an ordinary run directory whose W&B run is the sweep's run."""
    import wandb

    from learnreg import config as configlib

    cfg = configlib.load(config, overrides, imports)
    project = cfg["logger"]["project"] or f"learnreg-{cfg['method']}"
    spec = {
        "method": "grid",
        "name": out.name,
        "parameters": {k: {"values": v} for k, v in (parse_param(p) for p in params)},
    }
    sweep_id = wandb.sweep(spec, project=project)
    out.mkdir(parents=True, exist_ok=True)
    rows = []

    def one_point():
        # The sweep's run for this point (W&B files under the sweep directory).
        run = wandb.init(project=project, group=out.name, dir=str(out))
        point = {k: run.config[k] for k in points[0]}
        run_dir = out / point_name(point)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "wandb_id").write_text(run.id)  # the run's W&B logger adopts this run
        rows.append(_run_point(config, point, out, overrides, True, progress, imports))

    wandb.agent(sweep_id, function=one_point, project=project, count=len(points))
    return sorted(rows, key=lambda r: points.index({k: r[k] for k in points[0]}))


def write_table(rows: list[dict], out: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    (out / "comparison.csv").write_text(buffer.getvalue())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(table_cell(c, row.get(c, "")) for c in columns) + " |" for row in rows
    ]
    (out / "comparison.md").write_text("\n".join(lines) + "\n")


def table_cell(column: str, value) -> str:
    """Seconds to a tenth (timings vary more than that between runs), metrics to 4 decimals."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"
