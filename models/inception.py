"""The Inception network from the course lesson (GoogLeNet's InceptionA block on MNIST).

Kept exactly as the lesson designed it, 97,298 parameters, so that accuracy gains come
from the training recipe and not from a different architecture.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InceptionA", "InceptionNet"]


class InceptionA(nn.Module):
    """Four parallel branches whose outputs are concatenated to 88 channels."""

    out_channels = 16 + 24 + 24 + 24

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, 16, kernel_size=1)

        self.branch5x5_reduce = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5 = nn.Conv2d(16, 24, kernel_size=5, padding=2)

        self.branch3x3dbl_reduce = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch3x3dbl_1 = nn.Conv2d(16, 24, kernel_size=3, padding=1)
        self.branch3x3dbl_2 = nn.Conv2d(24, 24, kernel_size=3, padding=1)

        self.branch_pool = nn.Conv2d(in_channels, 24, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x C x H x W; every branch keeps H x W
        branch1x1 = self.branch1x1(x)  # N x 16 x H x W
        branch5x5 = self.branch5x5(self.branch5x5_reduce(x))  # N x 24 x H x W
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(self.branch3x3dbl_reduce(x)))
        # N x 24 x H x W
        pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(pooled)  # N x 24 x H x W
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], dim=1)  # N x 88 x H x W


class InceptionNet(nn.Module):
    """conv 5x5 -> pool -> InceptionA -> conv 5x5 -> pool -> InceptionA -> linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.inception1 = InceptionA(in_channels=10)
        self.conv2 = nn.Conv2d(InceptionA.out_channels, 20, kernel_size=5)
        self.inception2 = InceptionA(in_channels=20)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(InceptionA.out_channels * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x 1 x 28 x 28
        x = F.relu(self.pool(self.conv1(x)))  # N x 10 x 12 x 12
        x = self.inception1(x)  # N x 88 x 12 x 12
        x = F.relu(self.pool(self.conv2(x)))  # N x 20 x 4 x 4
        x = self.inception2(x)  # N x 88 x 4 x 4
        x = torch.flatten(x, 1)  # N x 1408
        return self.fc(x)  # N x 10 logits
