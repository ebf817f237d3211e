"""Datasets as tasks: scikit-learn (embedded), torchvision and IDX folders, few-shot episodes."""

from learnreg.data import class_pools, episodes, idx, optimizees, tabular, vision
from learnreg.data.episodes import FewShotEpisodes, SineEpisodes
from learnreg.data.idx import data_root, read_idx
from learnreg.data.splits import standardize, three_way_split
from learnreg.data.tabular import sklearn_task, tensor_task

__all__ = [
    "class_pools",
    "episodes",
    "idx",
    "optimizees",
    "tabular",
    "vision",
    "FewShotEpisodes",
    "SineEpisodes",
    "standardize",
    "three_way_split",
    "sklearn_task",
    "tensor_task",
    "data_root",
    "read_idx",
]
