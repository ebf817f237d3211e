"""The long benchmarks' tables read the run records they are built from correctly."""

import json

import pytest

from benchmarks import adalfl_fix
from learnreg import config as configlib


def _summary(directory, learned: float, same: float, tuned: float | None = None) -> None:
    """A run's summary; ``tuned`` None: a --same-settings-only run (no tuned block)."""
    directory.mkdir(parents=True)
    baselines = {"same_settings": {"test": {"error": same}}}
    if tuned is not None:
        baselines["tuned"] = {"test": {"error": tuned}}
    # `baseline` is the alias old readers use: the tuned block when there is one
    baseline = baselines.get("tuned", baselines["same_settings"])
    summary = {"test": {"error": learned}, "baselines": baselines, "baseline": baseline}
    (directory / "summary.json").write_text(json.dumps(summary))


def test_adalfl_fix_table_uses_the_same_settings_baseline_and_pairs_by_seed(tmp_path):
    preset = "adalfl/fmnist_cnn"
    for seed, (before, after) in enumerate([(0.12, 0.10), (0.14, 0.11), (0.13, 0.12)]):
        # `before` runs with --same-settings-only: no tuned block, `baseline` is same settings
        _summary(adalfl_fix.run_dir(tmp_path, preset, "before", seed), before, 0.11)
        _summary(adalfl_fix.run_dir(tmp_path, preset, "after", seed), after, 0.11, 0.09)
    table = adalfl_fix.table(preset, 3, tmp_path)
    assert "| 0 | 12.00% (?/?) | 10.00% (?/?) | 11.00% |" in table
    # after - before per seed: -2, -3, -1 points: mean -2.00, sd 1, t(0.975, 2) = 4.303
    assert "after - before: -2.00 pp [-4.48, +0.48] (n=3, no significant difference)" in table
    assert "11.00% ± 0.00 (n=3)" in table


def test_adalfl_fix_table_refuses_seeds_whose_baselines_differ(tmp_path):
    preset = "adalfl/fmnist_cnn"
    _summary(adalfl_fix.run_dir(tmp_path, preset, "before", 0), 0.12, 0.11, 0.09)
    _summary(adalfl_fix.run_dir(tmp_path, preset, "after", 0), 0.10, 0.115, 0.09)
    with pytest.raises(RuntimeError, match="CE baselines of before and after differ"):
        adalfl_fix.table(preset, 1, tmp_path)


def test_same_settings_only_drops_the_grid_and_the_control_and_nothing_else():
    base = ["seed=3", "logger.backends=[]", *adalfl_fix.VARIANTS["before"]]
    full = configlib.load("configs/adalfl/fmnist_cnn.yaml", base)
    light = configlib.load(
        "configs/adalfl/fmnist_cnn.yaml", [*base, *adalfl_fix.SAME_SETTINGS_ONLY]
    )
    assert full["baseline"]["tune"]["enabled"] and full["baseline"]["controls"] == ["learned_lr"]
    assert not light["baseline"]["tune"]["enabled"] and light["baseline"]["controls"] == []
    assert configlib.config_changes(full, light) != []
    full.pop("baseline"), light.pop("baseline")
    assert full == light


def test_adalfl_fix_leaves_a_seed_another_process_holds_and_runs_the_next(tmp_path, monkeypatch):
    from learnreg.tracking.lock import RunLock

    calls = []

    def fake_run(config, overrides, out, progress):
        with RunLock(out):  # as the runner does: a held directory raises RunLockedError
            calls.append(overrides[0])

    monkeypatch.setattr(adalfl_fix.learnreg, "run", fake_run)
    held = adalfl_fix.run_dir(tmp_path, "adalfl/fmnist_cnn", "after", 1)
    held.mkdir(parents=True)
    import filelock

    with filelock.FileLock(str(held / ".lock"), timeout=0):  # "another process"
        adalfl_fix.run("adalfl/fmnist_cnn", "after", 3, tmp_path, same_only=True)
    assert calls == ["seed=0", "seed=2"]
