"""Fault injection: a run killed with SIGKILL anywhere resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CONFIG = {
    "method": "ml3",
    "task": {"_component_": "digits", "batch_size": 32},
    "model": {"_component_": "mlp", "hidden": [256, 256]},
    "loss": {"_component_": "neural", "hidden": [16, 16]},
    "optimizer": {"_component_": "sgd", "lr": 0.05},
    "estimator": {"_component_": "truncated_unroll", "window": 1, "horizon": 1},
    "meta_steps": 40,
    "checkpoint_every": 5,
    "meta_test": {"steps": 300, "seeds": 2, "eval_every": 20},
    "logger": {"backends": []},
}
# One thread everywhere so every process computes bit-identical floats.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _start(config: Path, out: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "learnreg.cli",
        "run",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    return subprocess.Popen(
        cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _lines(out: Path) -> list[str]:
    path = out / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def _kill_when(proc: subprocess.Popen, out: Path, condition) -> bool:
    """SIGKILL ``proc`` as soon as ``condition(lines)`` holds; False if it finished first."""
    while proc.poll() is None:
        if condition(_lines(out)):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read()
    return False


def _result(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    files = sorted(p for p in (out / "learned").iterdir()) + sorted((out / "final").iterdir())
    return {
        "summary": {k: v for k, v in summary.items() if not k.endswith("_seconds")},
        "metrics": [json.loads(line) for line in _lines(out)],
        "files": {p.name: p.read_bytes() for p in files},
    }


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    reference = _start(config, tmp_path / "reference")
    assert reference.wait() == 0, reference.stderr.read()

    out = tmp_path / "faulty"
    kill_points = [
        lambda lines: sum('"meta_step"' in line for line in lines) >= 3,  # early meta-training
        lambda lines: sum('"meta_step"' in line for line in lines) >= 23,  # between checkpoints
        lambda lines: any('"inner_step"' in line for line in lines),  # during meta-test
    ]
    killed = [_kill_when(_start(config, out), out, point) for point in kill_points]
    assert killed[0], "the first kill must land before the run finished"
    assert not (out / "summary.json").exists() or not all(killed)
    final = _start(config, out)
    assert final.wait() == 0, final.stderr.read()
    assert _result(out) == _result(tmp_path / "reference")
