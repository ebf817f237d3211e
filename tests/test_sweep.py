"""Sweeps: a grid of ordinary runs and one comparison table."""

from __future__ import annotations

import csv

import pytest
import yaml
from test_runner import CONFIG

from learnreg.errors import ConfigError
from learnreg.sweep import grid, sweep


def test_grid_is_the_product_of_the_values():
    assert grid(["a=1,2", "b.c=x,y,z"]) == [{"a": 1, "b.c": v} for v in "xyz"] + [
        {"a": 2, "b.c": v} for v in "xyz"
    ]
    with pytest.raises(ConfigError, match="key.sub=value1,value2"):
        grid(["novalues"])
    with pytest.raises(ConfigError, match="repeated"):
        grid(["a=1", "a=2"])


def test_sweep_writes_one_run_per_point_and_a_table(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({**CONFIG, "meta_steps": 2, "meta_test": {"steps": 10, "seeds": 1}})
    )
    rows = sweep(str(config), ["optimizer.lr=0.05,0.2"], tmp_path / "sw", progress=False)
    assert [r["optimizer.lr"] for r in rows] == [0.05, 0.2]
    for name in ("optimizer.lr=0.05", "optimizer.lr=0.2"):
        resolved = yaml.safe_load((tmp_path / "sw" / name / "config.yaml").read_text())
        assert resolved["optimizer"]["lr"] == float(name.split("=")[1])
    table = list(csv.DictReader((tmp_path / "sw" / "comparison.csv").open()))
    assert [float(r["learned_error"]) for r in table] == [r["learned_error"] for r in rows]
    assert rows[0]["baseline_error"] != rows[1]["baseline_error"]  # the lr reached the baseline too
    assert "| optimizer.lr | learned_loss |" in (tmp_path / "sw" / "comparison.md").read_text()


def test_points_that_differ_in_what_is_learned_share_the_tuned_grid(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({**CONFIG, "meta_steps": 2, "meta_test": {"steps": 10, "seeds": 2}})
    )
    sweep(str(config), ["meta_optimizer.lr=0.001,0.01"], tmp_path / "sw", progress=False)
    import json

    first, second = (
        json.loads((tmp_path / "sw" / f"meta_optimizer.lr={v}" / "summary.json").read_text())
        for v in ("0.001", "0.01")
    )
    assert "cached_seeds" not in first["baselines"]["tuned"]["settings"]
    assert second["baselines"]["tuned"]["settings"].pop("cached_seeds") == [0, 1]
    assert second["baselines"]["tuned"] == first["baselines"]["tuned"]


def test_online_wandb_sweep_runs_each_point_in_the_sweeps_run(tmp_path, monkeypatch):
    """Online, the grid becomes a W&B sweep. No W&B server here: ``wandb.sweep`` and
    ``wandb.agent`` are replaced by fakes that behave like the controller and a local
    agent (the agent's ``wandb.init`` returns a run whose config is the point); the runs
    themselves are real offline W&B runs, read back afterwards."""
    import wandb

    import learnreg.tracking.wandb_logger as wandb_logger
    from learnreg.tracking.wandb_offline import read_run

    monkeypatch.setattr(wandb_logger, "wandb_mode", lambda: "online")
    monkeypatch.setenv("WANDB_MODE", "offline")  # what the fake agent's runs really are
    specs, real_init = [], wandb.init

    def fake_sweep(spec, project):
        specs.append((spec, project))
        return "sweep-1"

    def fake_agent(sweep_id, function, project, count):
        ((spec, _),) = specs
        points = grid(
            [f"{k}={','.join(map(str, v['values']))}" for k, v in spec["parameters"].items()]
        )
        assert sweep_id == "sweep-1" and count == len(points)
        for point in reversed(points):  # the controller's order is its own
            monkeypatch.setattr(wandb, "init", lambda p=point, **kw: real_init(config=p, **kw))
            function()
            monkeypatch.setattr(wandb, "init", real_init)

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb, "agent", fake_agent)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump({**CONFIG, "meta_steps": 2, "meta_test": {"steps": 10, "seeds": 1}})
    )
    out = tmp_path / "sw"
    rows = sweep(str(config), ["optimizer.lr=0.05,0.2"], out, wandb=True, progress=False)

    ((spec, project),) = specs
    assert spec["method"] == "grid" and spec["parameters"] == {
        "optimizer.lr": {"values": [0.05, 0.2]}
    }
    assert project == "learnreg-ml3"
    assert [r["optimizer.lr"] for r in rows] == [0.05, 0.2]  # table in grid order
    for lr in (0.05, 0.2):
        run_dir = out / f"optimizer.lr={lr}"
        run_id = (run_dir / "wandb_id").read_text().strip()
        (offline,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
        record = read_run(offline)  # the sweep's run carries the learnreg run's logs
        assert record["config"]["optimizer.lr"] == lr
        assert record["config"]["optimizer"]["lr"] == lr
        assert any("meta/meta_loss" in row for row in record["history"])
        assert not (run_dir / "wandb").exists()  # no second W&B run for the point
