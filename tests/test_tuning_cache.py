"""The tuned-baseline cache: a grid one run trained is read by another run with equal
settings, gives exactly that run's tuned baseline, and is never read across settings."""

from __future__ import annotations

import json

import pytest

import learnreg
from learnreg.eval import baselines

TINY = [
    "meta_steps=2",
    "model.hidden=[8]",
    "meta_test.steps=12",
    "meta_test.seeds=2",
    "logger.backends=[]",
    "device=cpu",
    "baseline.controls=[]",
]


def _tuned(summary: dict) -> dict:
    block = dict(summary["baselines"]["tuned"])
    block["settings"] = {k: v for k, v in block["settings"].items() if k != "cached_seeds"}
    return block


def _counting(monkeypatch) -> dict:
    calls = {"n": 0}
    original = baselines.tune_seed

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(baselines, "tune_seed", counted)
    return calls


def test_a_second_method_reads_the_grid_and_gets_the_same_tuned_baseline(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    learnreg.run("ml3/digits_mlp", TINY, out=tmp_path / "ml3", progress=False, tune_cache=cache)
    assert len(list(cache.glob("*.json"))) == 2  # one entry per meta-test seed
    calls = _counting(monkeypatch)
    cached = learnreg.run(
        "adalfl/digits_mlp", TINY, out=tmp_path / "adalfl", progress=False, tune_cache=cache
    )
    assert calls["n"] == 0  # nothing trained: both seeds came from the ML3 run's entries
    assert cached["baselines"]["tuned"]["settings"]["cached_seeds"] == [0, 1]
    fresh = learnreg.run("adalfl/digits_mlp", TINY, out=tmp_path / "fresh", progress=False)
    assert calls["n"] == 2 and "cached_seeds" not in fresh["baselines"]["tuned"]["settings"]
    assert _tuned(cached) == _tuned(fresh)  # every grid point, bit for bit
    assert cached["paired"]["tuned"] == fresh["paired"]["tuned"]


@pytest.mark.parametrize(
    "change", ["meta_test.steps=13", "seed=1", "baseline.tune.grid=[0.01,0.1]", "task.split_seed=1"]
)
def test_a_grid_is_not_read_across_settings_it_depends_on(tmp_path, monkeypatch, change):
    cache = tmp_path / "cache"
    learnreg.run("ml3/digits_mlp", TINY, out=tmp_path / "a", progress=False, tune_cache=cache)
    calls = _counting(monkeypatch)
    summary = learnreg.run(
        "ml3/digits_mlp", [*TINY, change], out=tmp_path / "b", progress=False, tune_cache=cache
    )
    assert calls["n"] == 2 and "cached_seeds" not in summary["baselines"]["tuned"]["settings"]


def test_an_entry_whose_key_differs_is_ignored_and_a_torn_one_retrained(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    learnreg.run("ml3/digits_mlp", TINY, out=tmp_path / "a", progress=False, tune_cache=cache)
    first, second = sorted(cache.glob("*.json"))
    entry = json.loads(first.read_text())
    entry["key"]["steps"] = 999  # an entry of another grid under this name (a collision)
    first.write_text(json.dumps(entry))
    second.write_text(second.read_text()[:40])  # cut short
    calls = _counting(monkeypatch)
    summary = learnreg.run(
        "ml3/digits_mlp", TINY, out=tmp_path / "b", progress=False, tune_cache=cache
    )
    assert calls["n"] == 2 and "cached_seeds" not in summary["baselines"]["tuned"]["settings"]


def test_the_learned_sides_grid_is_never_cached(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    both = [*TINY, "baseline.tune.learned=true"]
    learnreg.run("ml3/digits_mlp", both, out=tmp_path / "a", progress=False, tune_cache=cache)
    assert {json.loads(p.read_text())["key"]["side"] for p in cache.glob("*.json")} == {"tuned"}
    calls = _counting(monkeypatch)
    learnreg.run("ml3/digits_mlp", both, out=tmp_path / "b", progress=False, tune_cache=cache)
    assert calls["n"] == 2  # the learned side's two seeds, trained again


def test_the_cli_flag_reaches_the_runner(tmp_path):
    from learnreg.cli import main

    cache = tmp_path / "cache"
    argv = ["run", "ml3/digits_mlp", "--no-progress", "--out", str(tmp_path / "run")]
    assert main([*argv, "--tune-cache", str(cache), *TINY]) == 0
    assert len(list(cache.glob("*.json"))) == 2


def test_a_run_finished_before_the_cache_fills_it_from_its_checkpoint(tmp_path, monkeypatch):
    from benchmarks.loss_learning import fill_cache_from_run

    cache = tmp_path / "cache"
    learnreg.run("ml3/digits_mlp", TINY, out=tmp_path / "old", progress=False)  # no cache
    assert fill_cache_from_run(tmp_path / "old", cache) == 2
    assert fill_cache_from_run(tmp_path / "old", cache) == 0  # already there
    calls = _counting(monkeypatch)
    summary = learnreg.run(
        "adalfl/digits_mlp", TINY, out=tmp_path / "new", progress=False, tune_cache=cache
    )
    assert calls["n"] == 0 and summary["baselines"]["tuned"]["settings"]["cached_seeds"] == [0, 1]
