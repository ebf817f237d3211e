"""Models: MLP, LeNet-5, a small CNN, AllCNN-C and a small ResNet."""

from learnreg.models.cnn import AllCNNC, LeNet5, SmallCNN
from learnreg.models.mlp import MLP
from learnreg.models.resnet import ResNet

__all__ = ["MLP", "LeNet5", "SmallCNN", "AllCNNC", "ResNet"]
