"""Models: MLP, LeNet-5, a small CNN, AllCNN-C, a small ResNet, the 4-conv few-shot
backbone, FiLM modulation for any of them, and NPBML's warped networks."""

from learnreg.models.cnn import AllCNNC, LeNet5, SmallCNN
from learnreg.models.conv4 import BatchStatNorm, Conv4
from learnreg.models.film import FiLM, add_film
from learnreg.models.mlp import MLP
from learnreg.models.resnet import ResNet
from learnreg.models.warp import NPBMLMLP, NPBMLConv4, WarpLayer, adapt_only

__all__ = [
    "MLP",
    "LeNet5",
    "SmallCNN",
    "AllCNNC",
    "ResNet",
    "Conv4",
    "BatchStatNorm",
    "FiLM",
    "add_film",
    "NPBMLConv4",
    "NPBMLMLP",
    "WarpLayer",
    "adapt_only",
]
