"""Plots are drawn from what a run logged, written as real PNGs, and reach W&B."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
from test_runner import CONFIG

import learnreg
from learnreg.errors import DataError
from learnreg.tracking.wandb_offline import read_run

ADALFL = {
    **CONFIG,
    "method": "adalfl",
    "meta_steps": 4,
    "meta_test": {
        "steps": 30,
        "seeds": 2,
        "eval_every": 10,
        "adapt": {"_component_": "truncated_unroll", "window": 1, "horizon": None},
    },
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("adalfl")
    learnreg.run(ADALFL, out=out, progress=False)
    return out


def test_every_plot_is_a_real_png(run_dir):
    paths = learnreg.plot(run_dir)
    assert {p.stem for p in paths} == {
        "learning_curves",
        "meta_training",
        "loss_shape",
        "update_ratio",
        "update_statistics",
    }
    for path in paths:
        _assert_real_png(path)


def _assert_real_png(path):
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 300 and image.shape[1] >= 500 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.01  # something was drawn


def test_update_statistics_are_those_of_the_last_update(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sgd = [r for r in rows if "meta_test/baseline/update_rms" in r]
    assert [r["inner_step"] for r in sgd if r["seed"] == 0] == [10, 20, 30]
    for r in sgd:  # plain SGD moves every coordinate by a small, nonzero amount
        assert 0 < r["meta_test/baseline/update_rms"] < 1
        assert 0 < r["meta_test/baseline/update_to_weight"] < 0.1
        assert r["meta_test/baseline/update_active"] > 0.5


def test_update_statistics_closed_form():
    import torch

    from learnreg.eval.metrics import update_statistics

    before = {"w": torch.zeros(2, 2), "b": torch.ones(4)}
    after = {"w": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "b": torch.ones(4)}
    stats = update_statistics(before, after)
    assert stats["update_rms"] == pytest.approx((25 / 8) ** 0.5)
    assert stats["update_to_weight"] == pytest.approx(5 / (25 + 4) ** 0.5)
    assert stats["update_active"] == pytest.approx(2 / 8)


def test_pga_and_search_plots_are_drawn_from_their_records(tmp_path):
    records = [
        {
            "meta_step": g,
            "search/best_fitness": 0.5 - 0.01 * g,
            "search/generation_best": 0.5 - 0.005 * g,
            "search/mean_fitness": 0.7,
        }
        for g in range(1, 6)
    ]
    for seed in range(2):
        for tag, scale in (("learned", 1.0), ("baseline", 2.0)):
            records.append(
                {
                    "seed": seed,
                    **{
                        f"eval/{tag}/pga_{r:g}": scale * r * (1 + seed)
                        for r in (0.001, 0.005, 0.05, 0.1)
                    },
                }
            )
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    paths = learnreg.plot(tmp_path)
    assert {p.stem for p in paths} == {"pga", "search_fitness"}
    for path in paths:
        _assert_real_png(path)


def test_the_logged_loss_profile_tracks_the_online_loss(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    profiles = [r for r in rows if "meta_test/learned/loss_profile" in r and r["seed"] == 0]
    assert [r["inner_step"] for r in profiles] == [10, 20, 30]
    assert len(profiles[0]["meta_test/learned/loss_profile"]) == 41
    assert (
        profiles[0]["meta_test/learned/loss_profile"]
        != profiles[-1]["meta_test/learned/loss_profile"]
    )
    assert 0 < profiles[-1]["meta_test/learned/loss_argmin"] <= 1


def test_plots_reach_the_runs_wandb_record(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    learnreg.run({**ADALFL, "logger": {"backends": ["wandb"]}}, out=tmp_path, progress=False)
    assert len(list(tmp_path.glob("wandb/offline-run-*"))) == 1  # plots went into the run itself
    learnreg.plot(tmp_path)  # later: appended as a second segment of the same W&B run
    rows = [
        row for row in read_run(tmp_path)["history"] if any(k.startswith("plots/") for k in row)
    ]
    images = {k.rsplit("/", 1)[0]: row for row in rows for k in row if k.endswith("/_type")}
    expected = {
        "learning_curves",
        "meta_training",
        "loss_shape",
        "update_ratio",
        "update_statistics",
    }
    assert set(images) == {f"plots/{name}" for name in expected}
    for name, row in images.items():
        assert row[f"{name}/_type"] == "image-file" and row[f"{name}/height"] >= 300
    record = read_run(tmp_path)  # both segments, in order
    assert sum(1 for row in record["history"] if "plots/loss_shape/_type" in row) == 2
    assert any("meta/meta_loss" in row for row in record["history"])


def test_plot_of_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(DataError, match="metrics.jsonl not found"):
        learnreg.plot(tmp_path)


def test_many_meta_test_seeds_still_lay_out(tmp_path, recwarn):
    """600 meta-test episodes once made the update-ratio (then gradient-scale) legend taller than the figure."""
    rows = [
        {"inner_step": step, "seed": seed, "meta_test/update_ratio": 1.0 + seed / 600}
        for seed in range(600)
        for step in (5, 10)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path,) = learnreg.plot(tmp_path, names=["update_ratio"])
    _assert_real_png(path)
    assert not [w for w in recwarn if "layout" in str(w.message).lower()]
