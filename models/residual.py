"""The residual network from the course lesson: two plain residual blocks, 41,514 parameters."""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualBlock", "ResidualNet"]


class ResidualBlock(nn.Module):
    """relu(x + conv2(relu(conv1(x)))): two 3x3 convs that keep channels and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(x + y)


class ResidualNet(nn.Module):
    """conv 5x5 -> pool -> residual block -> conv 5x5 -> pool -> residual block -> linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)
        self.block1 = ResidualBlock(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.block2 = ResidualBlock(32)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x 1 x 28 x 28
        x = self.pool(F.relu(self.conv1(x)))  # N x 16 x 12 x 12
        x = self.block1(x)  # N x 16 x 12 x 12
        x = self.pool(F.relu(self.conv2(x)))  # N x 32 x 4 x 4
        x = self.block2(x)  # N x 32 x 4 x 4
        x = torch.flatten(x, 1)  # N x 512
        return self.fc(x)  # N x 10 logits
