"""Configs: defaults, overrides, and errors that name the nearest valid choice."""

from __future__ import annotations

import pytest

from learnreg import config
from learnreg.errors import ConfigError

BASE = {"task": {"_component_": "digits"}, "model": {"_component_": "mlp"}}


def test_defaults_are_filled_and_overrides_apply():
    cfg = config.load(BASE, ["optimizer.lr=0.5", "meta_steps=7", "loss=neural", "loss.hidden=[8]"])
    assert cfg["optimizer"] == {"_component_": "sgd", "lr": 0.5}
    assert cfg["meta_steps"] == 7 and cfg["loss"] == {"_component_": "neural", "hidden": [8]}
    assert (
        cfg["meta_test"]["steps"] == 1000 and cfg["estimator"]["_component_"] == "truncated_unroll"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["meta_step=3"], "unknown key 'meta_step'. Did you mean 'meta_steps'"),
        (["loss=nueral"], "unknown loss 'nueral'. Did you mean 'neural'"),
        (["optimizer.lrr=0.1"], "has no argument 'lrr'. Did you mean 'lr'"),
        (["optimizer.lr=fast"], "optimizer.lr must be float"),
        (["meta_test.stepz=3"], "meta_test: unknown key 'stepz'. Did you mean 'steps'"),
        (["loss.activation=relux"], "must be one of .* Did you mean 'relu'"),
        (["device=tpu"], "device must be auto, cpu, cuda"),
        (["meta_steps=ten"], "meta_steps must be int"),
        (["logger.backends=[wandbb]"], "Did you mean 'wandb'"),
        (["estimator=truncated_unrol"], "Did you mean 'truncated_unroll'"),
        (["noequals"], "must look like key.sub=value"),
    ],
)
def test_bad_configs_name_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load({**BASE, "loss": {"_component_": "neural"}}, overrides)


def test_missing_task_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no `task` section"):
        config.load({"model": {"_component_": "mlp"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {_component_: digits\nmodel: [")
    with pytest.raises(ConfigError, match="malformed YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        config.load(listing)


def test_components_outside_the_allow_list_are_refused():
    with pytest.raises(ConfigError, match="is not allowed"):
        config.load({**BASE, "loss": {"_component_": "os.system"}})
    with pytest.raises(ConfigError, match="is not allowed"):
        config.load({**BASE, "loss": {"_component_": "subprocess.Popen", "args": "rm -rf /"}})


def test_yaml_tags_cannot_construct_objects(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("task: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        config.load(evil)


def test_dotted_paths_inside_allowed_packages_work():
    cfg = config.load(
        {**BASE, "meta_optimizer": {"_component_": "torch.optim.RMSprop", "lr": 0.01}}
    )
    assert cfg["meta_optimizer"]["_component_"] == "torch.optim.RMSprop"
