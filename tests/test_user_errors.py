"""User mistakes: one ``error:`` line naming the cause and the fix, exit status 2, nothing
half-written; numbers and overrides as users write them; configurations that would leak.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from test_data import _write_idx

from learnreg import cli, config, registry
from learnreg.errors import ConfigError, DataError, ShapeError, StorageError
from learnreg.estimators import TruncatedUnroll
from learnreg.tracking import RunLock
from learnreg.tracking.checkpoint import load_checkpoint, save_checkpoint

BASE = {"task": {"_component_": "diabetes"}, "model": {"_component_": "mlp", "hidden": [4]}}


def _main(capsys, *argv):
    """Run the CLI in-process; return its exit status and stderr."""
    capsys.readouterr()
    rc = cli.main(list(argv))
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


# --- --out ---------------------------------------------------------------------------


def test_out_that_is_a_file_or_below_one_or_a_dangling_link(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "missing")
    for out, message in (
        (existing, "is an existing file"),
        (existing / "run", "lies below"),
        (dangling, "symbolic link"),
        (dangling / "run", "symbolic link"),
    ):
        rc, err = _main(capsys, "run", "quickstart", "--out", str(out))
        assert rc == 2 and message in err and "--out" in err, err
        _one_error_line(err)
    assert existing.read_text() == "keep me" and not (tmp_path / "missing").exists()
    rc, err = _main(capsys, "sweep", "quickstart", "--param", "seed=0,1", "--out", str(existing))
    assert rc == 2 and "is an existing file" in err


def test_the_cli_process_prints_one_line_for_a_bad_out(tmp_path):
    (tmp_path / "file").write_text("x")
    result = _cli("run", "quickstart", "--out", str(tmp_path / "file" / "run"))
    assert result.returncode == 2 and "lies below" in result.stderr
    _one_error_line(result.stderr)


# --- file systems that refuse writes ---------------------------------------------------


def _fail_fsync(code):
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    return fsync


@pytest.mark.parametrize(
    "code, fix", [(errno.ENOSPC, "free some space"), (errno.EROFS, "read-only")]
)
def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, code, fix):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1, "x": torch.ones(3)})
    monkeypatch.setattr(os, "fsync", _fail_fsync(code))
    with pytest.raises(StorageError, match=fix) as caught:
        save_checkpoint(path, {"step": 2, "x": torch.zeros(3)})
    assert caught.value.errno == code and str(path) in str(caught.value)
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["x"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left


def test_a_full_disk_during_a_run_is_one_line_and_leaves_no_directory(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(os, "fsync", _fail_fsync(errno.ENOSPC))
    out = tmp_path / "run"
    rc, err = _main(capsys, "run", "quickstart", "--out", str(out), "meta_steps=1")
    assert rc == 2 and "No space left" in err and "free some space" in err
    _one_error_line(err)
    assert not out.exists()


def test_a_read_only_lock_is_a_storage_error(tmp_path, monkeypatch):
    import filelock

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".lock"))

    monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    with pytest.raises(StorageError, match="read-only"), RunLock(tmp_path):
        pass


def test_unwrapped_os_errors_from_writes_are_one_line(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/comparison.md")

    monkeypatch.setattr(cli, "cmd_list", full)  # the parser binds it when main builds it
    rc, err = _main(capsys, "list")
    assert rc == 2 and "/runs/x/comparison.md" in err and "free some space" in err
    _one_error_line(err)


def test_an_export_below_a_file_is_a_storage_error(tmp_path):
    from learnreg.losses import NeuralLoss
    from learnreg.tracking.export import save_bias

    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="a parent of it is a file"):
        save_bias(NeuralLoss("classification", 3), tmp_path / "file" / "learned" / "loss")


# --- leftovers and permissions ----------------------------------------------------------


def test_resuming_removes_temporaries_of_interrupted_writes(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    leftovers = [
        tmp_path / "checkpoints" / ".last.pt.k2j_9xq1.tmp",
        tmp_path / ".summary.json.abcdefgh.tmp",
        tmp_path / "learned" / ".loss.safetensors.zz00zz00.tmp",
    ]
    kept = [tmp_path / "notes.tmp", tmp_path / "checkpoints" / "last.pt"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    with RunLock(tmp_path):
        assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in kept)


TINY = {
    **BASE,
    "task": {"_component_": "diabetes", "batch_size": 16},
    "loss": {"_component_": "neural", "kind": "regression", "hidden": [4]},
    "estimator": {"_component_": "truncated_unroll", "window": 1, "horizon": 1},
    "meta_steps": 2,
    "checkpoint_every": 1,
    "meta_test": {"steps": 4, "seeds": 1, "eval_every": 2},
    "logger": {"backends": []},
}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_file_of_a_run_directory_follows_the_umask(tmp_path, umask):
    import learnreg

    previous = os.umask(umask)
    try:
        learnreg.run(TINY, out=tmp_path / "run", progress=False)
    finally:
        os.umask(previous)
    modes = {
        str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777
        for p in (tmp_path / "run").rglob("*")
        if p.is_file()
    }
    assert {"run/metrics.jsonl", "run/config.yaml", "run/checkpoints/last.pt"} <= set(modes)
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_unreadable_configs_unknown_list_kinds_and_nan(tmp_path, capsys):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    rc, err = _main(capsys, "run", str(binary), "--out", str(tmp_path / "r"))
    assert rc == 2 and "UTF-8 YAML" in err and not (tmp_path / "r").exists()
    _one_error_line(err)
    rc, err = _main(capsys, "list", "losses")
    assert rc == 2 and "unknown kind" in err and "loss" in err
    with pytest.raises(ConfigError, match="optimizer.lr is NaN"):
        config.load(BASE, ["optimizer.lr=.nan"])


# --- config values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint_every=0", "checkpoint_every must be at least 1"),
        ("logger.every=0", "logger.every must be at least 1"),
        ("meta_steps=-1", "meta_steps must be at least 0"),
        ("meta_test.seeds=0", "meta_test.seeds must be at least 1"),
        ("meta_test.eval_every=-1", "meta_test.eval_every must be at least 0"),
        ("max_bad_steps=0", "max_bad_steps must be at least 1"),
        ("task.batch_size=0", "task.batch_size must be >= 1"),
        ("task.batch_size=-5", "task.batch_size must be >= 1"),
        ("model.hidden=[0]", "model.hidden must be >= 1"),
        ("model.hidden=[8,-2]", "model.hidden must be >= 1"),
        ("loss.hidden=[0]", "loss.hidden must be >= 1"),
        ("seed=-1", "seed must be a seed between 0 and 4294967295"),
        (f"seed={2**64}", "seed must be a seed between"),
        ("task.split_seed=-3", "task.split_seed must be a seed between"),
        ("logger.every=often", "logger.every must be int"),
    ],
)
def test_out_of_range_values_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        config.load({**BASE, "loss": {"_component_": "neural"}}, [override])


def test_out_of_range_values_fail_before_the_run_directory_exists(tmp_path, capsys):
    rc, err = _main(capsys, "run", "quickstart", "checkpoint_every=0", "--out", str(tmp_path / "r"))
    assert rc == 2 and "checkpoint_every" in err and not (tmp_path / "r").exists()
    _one_error_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    rc, err = _main(capsys, "run", "quickstart", "device=cuda", "--out", str(tmp_path / "r"))
    assert rc == 2 and "no CUDA GPU" in err and "device=cpu" in err
    _one_error_line(err)
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("LEARNREG_DEVICE", "cuda:1")
    rc, err = _main(capsys, "run", "quickstart", "--out", str(tmp_path / "r"))
    assert rc == 2 and "'cuda:1'" in err and "LEARNREG_DEVICE" in err


# --- numbers and overrides ----------------------------------------------------------------


def test_exponent_numbers_are_floats_in_overrides_and_yaml(tmp_path):
    cfg = config.load(BASE, ["optimizer.lr=1e-3", "meta_optimizer.lr=1E-4", "meta_grad_clip=5e2"])
    assert cfg["optimizer"]["lr"] == 0.001 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["meta_optimizer"]["lr"] == 1e-4 and isinstance(cfg["meta_optimizer"]["lr"], float)
    assert cfg["meta_grad_clip"] == 500.0
    path = tmp_path / "c.yaml"
    path.write_text(
        "task: {_component_: diabetes}\nmodel: {_component_: mlp}\n"
        "optimizer: {_component_: sgd, lr: 1e-3}\nmeta_optimizer: {_component_: adam, lr: -2.5e-4}\n"
        "description: 1e3 steps\n"
    )
    cfg = config.load(path)
    assert cfg["optimizer"]["lr"] == 0.001 and cfg["meta_optimizer"]["lr"] == -2.5e-4
    assert cfg["description"] == "1e3 steps"  # not a number: stays text
    assert config.parse_yaml("[1, 2.5, 1e1, .5, abc, 1e, 0x10]") == [
        1,
        2.5,
        10.0,
        0.5,
        "abc",
        "1e",
        16,
    ]


def test_overrides_may_follow_options(monkeypatch, capsys, tmp_path):
    import learnreg.runner
    import learnreg.sweep

    calls = []
    monkeypatch.setattr(learnreg.runner, "run", lambda *a, **k: calls.append(a) or {})
    assert (
        cli.main(["run", "quickstart", "seed=1", "--out", "D", "meta_steps=3", "--no-progress"])
        == 0
    )
    assert calls[-1][:3] == ("quickstart", ["seed=1", "meta_steps=3"], "D")

    def sweep(config, params, out, overrides, *rest, **keywords):
        calls.append((config, params, overrides))
        (tmp_path / "comparison.md").write_text("table\n")

    monkeypatch.setattr(learnreg.sweep, "sweep", sweep)
    assert (
        cli.main(
            ["sweep", "quickstart", "--param", "seed=0,1", "--out", str(tmp_path), "meta_steps=3"]
        )
        == 0
    )
    assert calls[-1] == ("quickstart", ["seed=0,1"], ["meta_steps=3"])
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "quickstart", "--out", "D", "--bogus"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["list", "loss", "meta_steps=3"])  # `list` takes no overrides


# --- IDX files -----------------------------------------------------------------------------


def _idx_folder(folder, train=(30, 28, 28), train_labels=30, compress=False):
    rng = np.random.default_rng(0)
    gz = ".gz" if compress else ""
    _write_idx(folder / f"train-images-idx3-ubyte{gz}", rng.integers(0, 255, train), compress)
    _write_idx(folder / f"train-labels-idx1-ubyte{gz}", rng.integers(0, 10, train_labels), compress)
    _write_idx(folder / f"t10k-images-idx3-ubyte{gz}", rng.integers(0, 255, (10, 28, 28)), compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{gz}", rng.integers(0, 10, 10), compress)
    return folder


def _load_fmnist(folder):
    from learnreg.data import idx, vision

    idx.load_idx_dataset.cache_clear()
    return vision.fashion_mnist(path=str(folder), val_size=5)


def test_idx_truncated_header(tmp_path):
    from learnreg.data import read_idx

    (tmp_path / "a").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 60))  # 1 of 3 dims
    with pytest.raises(DataError, match="header announces 3 dimensions but holds 1"):
        read_idx(tmp_path / "a")
    (tmp_path / "b").write_bytes(bytes([0, 0, 8, 0]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b")


def test_idx_corrupt_gzip_stream(tmp_path):
    from learnreg.data import read_idx

    _write_idx(tmp_path / "x.gz", np.arange(4000).reshape(10, 20, 20) % 251, compress=True)
    blob = bytearray((tmp_path / "x.gz").read_bytes())
    blob[30:60] = bytes(30)  # damage the deflate stream, keep the gzip header
    (tmp_path / "x.gz").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="damaged"):
        read_idx(tmp_path / "x.gz")
    (tmp_path / "y.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="damaged"):
        read_idx(tmp_path / "y.gz")


def test_idx_label_count_and_image_rank(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="30 train images but 29 labels"):
        _load_fmnist(_idx_folder(tmp_path / "a", train_labels=29))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"images must be \(N, height, width\)"):
        _load_fmnist(_idx_folder(tmp_path / "b", train=(30, 784)))
    (tmp_path / "c").mkdir()
    task = _load_fmnist(_idx_folder(tmp_path / "c", compress=True))
    assert task.train.x.shape == (25, 1, 28, 28)


# --- labels given to a loss ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["neural", "taylor", "symbolic", "task_plus_learned", "ce"])
def test_a_label_out_of_range_given_to_a_loss(name):
    loss = registry.lookup("loss", name)
    loss = loss() if name == "ce" else loss(kind="classification", num_classes=3)
    logits = torch.randn(2, 3)
    for labels, shown in (([0, 3], "from 0 to 3"), ([-1, 2], "from -1 to 2")):
        with pytest.raises(ShapeError, match=rf"\[0, 3\).*{shown}"):
            loss(logits, torch.tensor(labels))
    good = torch.tensor([0, 2])
    batched = torch.func.vmap(loss)(logits.expand(4, 2, 3), good.expand(4, 2))
    torch.testing.assert_close(batched, loss(logits, good).expand(4))  # vmap still works


# --- a closed pipe -----------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["list"], ["list", "loss"]])  # more and less than a buffer
def test_list_into_a_closed_pipe_exits_quietly(argv):
    proc = subprocess.Popen(
        [sys.executable, "-m", "learnreg.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    proc.stdout.close()  # the reader is gone before the first write, like `| head` after it
    rc = proc.wait(timeout=120)
    err = proc.stderr.read().decode()
    assert rc == 0 and err == "", (rc, err)


# --- leaks by configuration ----------------------------------------------------------------


EPISODIC = {"model": {"_component_": "mlp", "hidden": [8]}, "loss": {"_component_": "neural"}}


@pytest.mark.parametrize(
    "task", [{"_component_": "sine"}, {"_component_": "few_shot", "dataset": "digits"}]
)
def test_meta_test_adaptation_on_query_labels_is_refused(task):
    for adapt in (
        {"_component_": "truncated_unroll", "objective_batch": "val"},
        {"_component_": "truncated_unroll", "horizon": None},  # val is the default
    ):
        with pytest.raises(ConfigError, match="query set"):
            config.load({**EPISODIC, "task": task, "meta_test": {"adapt": adapt}})
    ok = {"_component_": "truncated_unroll", "objective_batch": "train", "horizon": None}
    assert config.load({**EPISODIC, "task": task, "meta_test": {"adapt": ok}})
    # a non-episodic task's val split is held-out training data: adapting on it is fine
    assert config.load({**BASE, "meta_test": {"adapt": {"_component_": "truncated_unroll"}}})


def test_a_horizon_that_is_not_a_multiple_of_the_window_is_refused():
    with pytest.raises(ConfigError, match="horizon 5 is not a multiple of window 2.*4 or 6"):
        TruncatedUnroll(window=2, horizon=5)
    spec = {"_component_": "truncated_unroll", "window": 3, "horizon": 10}
    with pytest.raises(ConfigError, match=r"estimator: estimator horizon 10 .* window 3"):
        config.load({**BASE, "estimator": spec})
    with pytest.raises(ConfigError, match="meta_test.adapt"):
        config.load({**BASE, "meta_test": {"adapt": spec}})
    assert TruncatedUnroll(window=2, horizon=6).horizon == 6
    assert TruncatedUnroll(window=4, horizon=None).horizon is None


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "learnreg.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        cwd=tempfile.gettempdir(),
        timeout=120,
    )
