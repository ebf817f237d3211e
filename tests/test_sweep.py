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
