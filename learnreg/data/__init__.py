"""Datasets as tasks: scikit-learn (embedded), torchvision and IDX folders."""

from learnreg.data import optimizees, tabular, vision
from learnreg.data.splits import standardize, three_way_split
from learnreg.data.tabular import sklearn_task
from learnreg.data.vision import data_root, read_idx

__all__ = [
    "optimizees",
    "tabular",
    "vision",
    "standardize",
    "three_way_split",
    "sklearn_task",
    "data_root",
    "read_idx",
]
