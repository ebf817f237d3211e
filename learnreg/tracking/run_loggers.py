"""The loggers of one run directory, as its config's ``logger`` section asks for them:
``metrics.jsonl`` always (it is what a resume truncates and the plots read), the console
and W&B when listed in ``logger.backends``."""

from __future__ import annotations

from pathlib import Path

from learnreg.tracking.loggers import ConsoleLogger, JsonlLogger, MultiLogger, WandbLogger


def run_loggers(cfg: dict, out: Path, setting: str) -> tuple[JsonlLogger, MultiLogger]:
    """The run's JSONL logger and every logger it writes to.

    Args:
        cfg: the resolved run config.
        out: the run directory.
        setting: the config's name (a preset such as ``adalfl/digits_mlp``, or the
            method): the W&B group, unless ``logger.group`` names one, and the start of
            the W&B run's name.

    Returns:
        ``(jsonl, logger)``: the ``metrics.jsonl`` writer (the runner checkpoints its line
        count) and the :class:`MultiLogger` over it and the other backends.
    """
    log, mt = cfg["logger"], cfg["meta_test"]
    jsonl = JsonlLogger(out / "metrics.jsonl")
    console = (
        ConsoleLogger(
            log["every"],
            meta_steps=cfg["meta_steps"],
            meta_test_steps=mt["steps"],
            meta_test_seeds=mt["seeds"],
            eval_every=mt["eval_every"],
            runs_per_seed=2 if mt["baseline"] else 1,
        )
        if "console" in log["backends"]
        else None
    )
    wandb = (
        WandbLogger(
            out,
            cfg,
            log["project"],
            log["group"] or setting,
            log["tags"],
            name=f"{setting} seed={cfg['seed']} ({out.resolve().name})",
        )
        if "wandb" in log["backends"]
        else None
    )
    return jsonl, MultiLogger(jsonl, console, wandb)
