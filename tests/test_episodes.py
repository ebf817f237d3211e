"""Episodic task families: disjoint class splits, N-way K-shot episodes relabelled per
episode, seeded and reproducible, and the folder datasets' layouts and errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import FASHION_MNIST

from learnreg.data import FewShotEpisodes, SineEpisodes
from learnreg.data.class_pools import load_pool, split_classes
from learnreg.errors import DataError


def _rows(pool, task_split):
    """Pool rows of an episode's images (exact match of the normalized images)."""
    images = pool.images(torch.arange(len(pool.y))).flatten(1)
    match = (task_split.x.flatten(1)[:, None, :] == images[None]).all(-1)
    assert (match.sum(1) >= 1).all()
    return match.float().argmax(1)


def test_class_split_is_a_seeded_disjoint_partition():
    split = split_classes(10, (5, 2, 3), seed=4)
    assert [len(split[p]) for p in ("train", "val", "test")] == [5, 2, 3]
    assert sorted(sum(split.values(), [])) == list(range(10))
    assert split == split_classes(10, (5, 2, 3), seed=4) != split_classes(10, (5, 2, 3), seed=5)
    with pytest.raises(DataError, match="class_split"):
        split_classes(10, (6, 0, 5), seed=0)


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 15), (3, 5, 4)])
def test_digits_episodes_are_n_way_k_shot_from_their_meta_split(ways, shots, queries):
    family = FewShotEpisodes("digits", ways, shots, queries)
    pool = family.pool
    assert not set(pool.classes["train"]) & set(pool.classes["test"])
    for phase, draw in (("train", family.sample), ("test", family.meta_test_task)):
        for index in range(3):
            task = draw(index)
            assert task.train.x.shape == (ways * shots, 1, 8, 8)
            assert task.val is task.test and len(task.test) == ways * queries
            assert torch.equal(torch.bincount(task.train.y), torch.full((ways,), shots))
            assert torch.equal(torch.bincount(task.test.y), torch.full((ways,), queries))
            support, query = _rows(pool, task.train), _rows(pool, task.test)
            assert not set(support.tolist()) & set(query.tolist())
            original = pool.y[torch.cat([support, query])]
            assert set(original.tolist()) <= set(pool.classes[phase])
            labels = torch.cat([task.train.y, task.test.y])
            # one original class per episode label, and the mapping is a bijection
            pairs = set(zip(labels.tolist(), original.tolist()))
            assert len(pairs) == ways == len({o for _, o in pairs})


def test_episodes_are_reproducible_and_relabelled_at_random():
    family = FewShotEpisodes("digits", 5, 1, 2)
    a, b = family.sample(7), family.sample(7)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(family.sample(8).train.x, a.train.x)
    assert not torch.equal(family.meta_test_task(7).train.x, a.train.x)
    mappings = {
        tuple(family.pool.y[_rows(family.pool, family.sample(i).train)].tolist()) for i in range(6)
    }
    assert len(mappings) > 1  # label 0 is not always the smallest original class


def test_normalization_uses_meta_train_classes_only():
    family = FewShotEpisodes("digits", 5, 1, 1)
    pool = family.pool
    train_rows = torch.cat([pool.indices(c) for c in pool.classes["train"]])
    x = pool.x[train_rows] * pool.scale
    torch.testing.assert_close(pool.mean.flatten(), x.mean((0, 2, 3)))
    images = pool.images(train_rows)
    assert abs(images.mean().item()) < 1e-5 and abs(images.std().item() - 1) < 1e-2


def test_bad_episode_settings_name_the_fix():
    with pytest.raises(DataError, match="6-way episodes need 6 meta-train classes"):
        FewShotEpisodes("digits", ways=6)
    with pytest.raises(DataError, match="lower task.shots or task.queries"):
        FewShotEpisodes("digits", 5, shots=100, queries=100)
    with pytest.raises(DataError, match="ways, shots, queries >= 1"):
        FewShotEpisodes("digits", 5, shots=0)


def test_sine_episodes_share_one_sine_between_support_and_query():
    family = SineEpisodes(shots=5, queries=20)
    for draw in (family.sample, family.meta_test_task):
        task = draw(3)
        assert task.kind == "regression" and task.train.x.shape == (5, 1)
        # y = a·sin x + b·cos x exactly: fit on the support, predict the query
        basis = lambda x: torch.cat([torch.sin(x), torch.cos(x)], 1).double()  # noqa: E731
        coef = torch.linalg.lstsq(basis(task.train.x), task.train.y.double()).solution
        torch.testing.assert_close(
            basis(task.test.x) @ coef, task.test.y.double(), atol=1e-4, rtol=0
        )
        amplitude = coef.norm().item()
        assert 0.1 <= amplitude <= 5.0 + 1e-4
        assert task.test.x.abs().max() <= 5.0
    assert not torch.equal(family.sample(3).train.y, family.meta_test_task(3).train.y)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST), reason="Fashion-MNIST not installed")
def test_fashion_mnist_five_way_episodes():
    family = FewShotEpisodes("fashion_mnist", 5, 5, 15)
    assert len(family.pool.y) == 70000
    assert sorted(family.pool.classes["train"] + family.pool.classes["test"]) == list(range(10))
    task = family.meta_test_task(0)
    assert task.train.x.shape == (25, 1, 28, 28) and len(task.test) == 75


def _png(path: Path, value: int, size=(105, 105), mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)


def test_omniglot_folder_layout(tmp_path):
    root = tmp_path / "omniglot-py"
    for part, alphabets in (("images_background", 2), ("images_evaluation", 1)):
        for a in range(alphabets):
            for c in range(3):
                for k in range(4):
                    _png(root / part / f"alpha{a}" / f"char{c}" / f"{k}.png", 10 * c + k)
    pool = load_pool("omniglot", class_split=(5, 1, 3), path=str(root))
    assert pool.x.shape == (36, 1, 28, 28) and pool.x.dtype == torch.uint8
    assert int(pool.y.max()) == 8 and torch.equal(torch.bincount(pool.y), torch.full((9,), 4))
    assert int(pool.x[0, 0, 0, 0]) == 255  # strokes (dark pixels) become bright
    family = FewShotEpisodes("omniglot", 3, 1, 2, class_split=[5, 1, 3], path=str(root))
    assert family.meta_test_task(0).train.x.shape == (3, 1, 28, 28)


def test_missing_omniglot_names_the_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"Omniglot not found in .*images_background.*download"):
        load_pool("omniglot", path=str(tmp_path / "nowhere"))


@pytest.mark.parametrize("layout", ["folders", "csv"])
def test_mini_imagenet_layouts(tmp_path, layout):
    root = tmp_path / "mini-imagenet"
    classes = {"train": 3, "val": 1, "test": 2}
    rows = {}
    for phase, n in classes.items():
        for c in range(n):
            for k in range(3):
                wnid = f"n{phase}{c}"
                if layout == "folders":
                    _png(root / phase / wnid / f"{k}.jpg", 40 * c + k, (90, 90), "RGB")
                else:
                    name = f"{wnid}_{k}.jpg"
                    _png(root / "images" / name, 40 * c + k, (90, 90), "RGB")
                    rows.setdefault(phase, []).append(f"{name},{wnid}")
    for phase, lines in rows.items():
        (root / f"{phase}.csv").write_text("filename,label\n" + "\n".join(lines) + "\n")
    pool = load_pool("mini_imagenet", path=str(root))
    assert pool.x.shape == (18, 3, 84, 84)
    assert [len(pool.classes[p]) for p in ("train", "val", "test")] == [3, 1, 2]
    assert not set(pool.classes["train"]) & set(pool.classes["test"])
    family = FewShotEpisodes("mini_imagenet", 2, 1, 2, path=str(root))
    assert family.meta_test_task(0).train.x.shape == (2, 3, 84, 84)


def test_missing_mini_imagenet_names_both_layouts(tmp_path):
    with pytest.raises(DataError, match=r"mini-ImageNet not found.*train/, val/, test/.*csv"):
        load_pool("mini_imagenet", path=str(tmp_path))
    with pytest.raises(DataError, match="fixed by its folders"):
        load_pool("mini_imagenet", class_split=(3, 1, 1), path=str(tmp_path))


def test_unknown_source_is_rejected():
    with pytest.raises(DataError, match="choose from"):
        load_pool("cifar100")
