"""Temperature scaling and expected calibration error.

A raw network is over- or under-confident; dividing its logits by one scalar fitted on
held-out data makes "confidence 0.9" mean "right about 9 times in 10" without changing
any prediction. The modules here are what the service runs, so training, evaluation and
serving compute probabilities the same way.
"""

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CalibratedClassifier", "Ensemble", "expected_calibration_error", "fit_temperature"]


class CalibratedClassifier(nn.Module):
    """A network whose output is softmax(logits / temperature)."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x) / self.temperature, dim=1)  # N x 10 probabilities


class Ensemble(nn.Module):
    """Mean of the members' probabilities, re-sharpened by its own temperature.

    The mean of calibrated members is itself under-confident when they agree, so the
    ensemble gets a temperature of its own, applied to the log of the mean.
    """

    def __init__(self, members: Sequence[nn.Module], temperature: float = 1.0) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperature: torch.Tensor
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def mean_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_mean = torch.log(self.mean_probabilities(x).clamp_min(1e-12))
        return torch.softmax(log_mean / self.temperature, dim=1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``.

    Fitted as log(T) so T stays positive; L-BFGS converges in a few steps on one scalar.
    """
    log_t = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits = logits.detach().double()

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp().double(), labels)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    ece = 0.0
    for low, high in itertools.pairwise(edges):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            gap = (confidence[in_bin].double().mean() - correct[in_bin].mean()).abs()
            ece += float(gap) * float(in_bin.double().mean())
    return ece
