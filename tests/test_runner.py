"""Run directories: contents, resume equivalence, locks, the W&B offline record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Interrupt, interrupted_at

import learnreg
from learnreg import losses
from learnreg.errors import ConfigError, RunLockedError
from learnreg.estimators import TruncatedUnroll
from learnreg.eval import meta_test
from learnreg.tracking import RunLock
from learnreg.tracking.wandb_offline import read_run, wait_until_complete

CONFIG = {
    "method": "ml3",
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [16]},
    "loss": {"_component_": "neural", "hidden": [8, 8]},
    "optimizer": {"_component_": "sgd", "lr": 0.05},
    "estimator": {"_component_": "truncated_unroll", "window": 1, "horizon": 1},
    "meta_steps": 12,
    "checkpoint_every": 4,
    "meta_test": {"steps": 40, "seeds": 2, "eval_every": 20},
    "logger": {"backends": []},
}


def _strip(summary):
    return {k: v for k, v in summary.items() if not k.endswith("_seconds")}


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_directory_contents(tmp_path):
    summary = learnreg.run(CONFIG, out=tmp_path, progress=False)
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoints/last.pt",
        "learned/loss.json",
        "learned/loss.safetensors",
    ):
        assert (tmp_path / name).exists(), name
    for key in (
        "method",
        "task",
        "seed",
        "test",
        "baseline",
        "meta_train_seconds",
        "meta_test_seconds",
    ):
        assert key in summary
    assert (
        set(summary["test"]) == {"loss", "error", "accuracy"}
        and "error" in summary["baseline"]["test"]
    )
    assert 0 <= summary["test"]["error"] <= 1 and summary["meta_test_seeds"] == 2
    meta = [r for r in _records(tmp_path) if "meta_step" in r]
    assert [r["meta_step"] for r in meta] == list(range(1, 13))
    loss = losses.load(tmp_path / "learned" / "loss")
    assert type(loss).__name__ == "NeuralLoss"
    # A finished run returns its summary instead of running again.
    assert learnreg.run(CONFIG, out=tmp_path, progress=False) == json.loads(
        (tmp_path / "summary.json").read_text()
    )


# Killed during meta-training (meta-step 10), or during meta-test (the learned model of
# the second seed: the 3rd meta-test run, after seed 0's learned and baseline runs).
@pytest.mark.parametrize(
    "cls,method,call",
    [(TruncatedUnroll, "estimate", 10), (meta_test, "meta_test_run", 3)],
    ids=["fit", "meta_test"],
)
def test_interrupted_run_resumes_to_the_same_result(tmp_path, cls, method, call):
    reference = learnreg.run(CONFIG, out=tmp_path / "ref", progress=False)
    with interrupted_at(cls, method, call), pytest.raises(Interrupt):
        learnreg.run(CONFIG, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "summary.json").exists()

    resumed = learnreg.run(CONFIG, out=tmp_path / "run", progress=False)
    assert _strip(resumed) == _strip(reference)
    assert _records(tmp_path / "run") == _records(tmp_path / "ref")
    ref_bytes = (tmp_path / "ref" / "learned" / "loss.safetensors").read_bytes()
    assert (tmp_path / "run" / "learned" / "loss.safetensors").read_bytes() == ref_bytes


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    learnreg.run(
        {**CONFIG, "meta_steps": 2, "meta_test": {"steps": 5, "seeds": 1}},
        out=tmp_path,
        progress=False,
    )
    with pytest.raises(ConfigError, match="different config"):
        learnreg.run(
            {**CONFIG, "meta_steps": 3, "meta_test": {"steps": 5, "seeds": 1}},
            out=tmp_path,
            progress=False,
        )


def test_two_writers_cannot_share_a_run_directory(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLockedError, match="another process"):
        learnreg.run(CONFIG, out=tmp_path, progress=False)


def test_online_adaptation_exports_the_adapted_loss(tmp_path, capsys):
    cfg = {
        **CONFIG,
        "method": "adalfl",
        "meta_steps": 3,
        "meta_test": {
            "steps": 10,
            "seeds": 1,
            "adapt": {"_component_": "truncated_unroll", "window": 1, "horizon": None},
        },
    }
    learnreg.run(cfg, out=tmp_path, progress=False)
    assert not (tmp_path / "learned" / "loss.json").exists()  # the names say which is which
    before = losses.load(tmp_path / "learned" / "loss_offline")
    after = losses.load(tmp_path / "learned" / "loss_online_seed0")
    assert any((a != b).any() for a, b in zip(before.parameters(), after.parameters()))
    from learnreg.cli import main

    assert main(["describe", str(tmp_path)]) == 0  # falls back to the online loss, says so
    out = capsys.readouterr().out
    assert "loss_online_seed0 is meta-test seed 0's adapted loss" in out
    assert "meta-trained on 10 classes" in out


def test_closing_waits_for_wandb_to_flush_its_offline_log(tmp_path, monkeypatch):
    """wandb's finish() can return while wandb-core still holds the log (on a loaded
    machine a run was read back as its 7-byte header); the logger waits for the exit
    record."""
    import threading

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb.init(project="p", dir=str(tmp_path), reinit="create_new", mode="offline")
    run.log({"x": 1.0})
    log_file = run.settings.sync_file
    run.finish()
    assert wait_until_complete(log_file, timeout=30)
    complete = Path(log_file).read_bytes()
    late = tmp_path / "late.wandb"
    late.write_bytes(complete[:7])  # what a reader saw right after finish()
    assert not wait_until_complete(late, timeout=0.2)
    threading.Timer(0.3, late.write_bytes, (complete,)).start()
    assert wait_until_complete(late, timeout=10)
    assert read_run(late)["history"][0]["x"] == 1.0


def test_wandb_offline_run_records_config_metrics_and_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {
        **CONFIG,
        "meta_steps": 5,
        "meta_test": {"steps": 20, "seeds": 1, "eval_every": 10},
        "logger": {"backends": ["wandb"]},
    }
    learnreg.run(cfg, out=tmp_path, progress=False)
    record = read_run(tmp_path)
    assert record["config"]["method"] == "ml3" and record["config"]["meta_steps"] == 5
    logged = [row for row in record["history"] if "meta/meta_loss" in row]
    jsonl = [r for r in _records(tmp_path) if "meta_step" in r]
    assert [row["meta_step"] for row in logged] == [1, 2, 3, 4, 5]
    assert [row["meta/meta_loss"] for row in logged] == pytest.approx(
        [r["meta/meta_loss"] for r in jsonl]
    )
    curves = [row for row in record["history"] if "meta_test/learned/seed_0/test_error" in row]
    assert [row["inner_step"] for row in curves] == [10, 20]
    artifact = next(a for a in record["artifacts"] if a["type"] == "learned-biases")
    assert {"loss.json", "loss.safetensors"} <= set(artifact["files"])


def test_wandb_record_holds_name_group_summary_and_every_seed(tmp_path, monkeypatch):
    import yaml

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = {
        **CONFIG,
        "meta_steps": 3,
        "meta_test": {"steps": 10, "seeds": 2, "eval_every": 5},
        "logger": {"backends": ["wandb"]},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    summary = learnreg.run(tmp_path / "tiny.yaml", out=tmp_path / "run", progress=False)
    record = read_run(tmp_path / "run")
    assert record["name"] == "tiny seed=0 (run)" and record["group"] == "tiny"
    # The summary under summary.json's keys, nested keys joined with "/".
    assert record["summary"]["n"] == 2
    for metric in ("accuracy", "loss"):
        assert record["summary"][f"test/{metric}"] == pytest.approx(summary["test"][metric])
        assert record["summary"][f"test_ci95/{metric}"] == pytest.approx(
            summary["test_ci95"][metric]
        )
        assert record["summary"][f"baseline/test/{metric}"] == pytest.approx(
            summary["baseline"]["test"][metric]
        )
    # Every seed, as its own series; the learned loss's units under their own key.
    jsonl = [r for r in _records(tmp_path / "run") if "inner_step" in r]
    for seed in (0, 1):
        rows = [r for r in record["history"] if r.get("seed") == seed]
        learned = [r for r in rows if f"meta_test/learned/seed_{seed}/test_error" in r]
        assert [r["inner_step"] for r in learned] == [5, 10]
        expected = [
            r["meta_test/learned/test_error"]
            for r in jsonl
            if "meta_test/learned/test_error" in r and r["seed"] == seed
        ]
        assert [r[f"meta_test/learned/seed_{seed}/test_error"] for r in learned] == pytest.approx(
            expected
        )
        assert all(f"meta_test/learned/seed_{seed}/train_learned_loss" in r for r in learned)
        assert not any(f"meta_test/learned/seed_{seed}/train_loss" in r for r in rows)
        assert any(f"meta_test/baseline/seed_{seed}/train_loss" in r for r in rows)
