"""The networks are exactly the course's: layer shapes, parameter counts, outputs."""

import pytest
import torch

from models.calibration import CalibratedClassifier, Ensemble, expected_calibration_error, fit_temperature
from models.complexity import count_macs, count_parameters
from models.inception import InceptionA, InceptionNet
from models.registry import ARCHITECTURES, SERVED_MODELS, build
from models.residual import ResidualBlock, ResidualNet


def test_inception_parameter_count_and_layers() -> None:
    net = InceptionNet()
    assert count_parameters(net) == 97_298
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (1, 10, (5, 5))
    assert (net.conv2.in_channels, net.conv2.out_channels, net.conv2.kernel_size) == (88, 20, (5, 5))
    assert (net.fc.in_features, net.fc.out_features) == (1408, 10)
    block = net.inception1
    assert block.branch5x5.padding == (2, 2) and block.branch3x3dbl_1.padding == (1, 1)


def test_inception_block_concatenates_to_88_channels() -> None:
    assert InceptionA(10)(torch.zeros(2, 10, 12, 12)).shape == (2, 88, 12, 12)
    assert InceptionA(20)(torch.zeros(2, 20, 4, 4)).shape == (2, 88, 4, 4)


def test_residual_parameter_count_and_layers() -> None:
    net = ResidualNet()
    assert count_parameters(net) == 41_514
    assert (net.conv1.out_channels, net.conv2.in_channels, net.conv2.out_channels) == (16, 16, 32)
    assert (net.fc.in_features, net.fc.out_features) == (512, 10)


def test_residual_block_adds_its_input() -> None:
    block = ResidualBlock(4)
    for conv in (block.conv1, block.conv2):
        torch.nn.init.zeros_(conv.weight)
        assert conv.bias is not None
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(block(x), torch.relu(x))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_gives_ten_logits_per_image(arch: str) -> None:
    assert build(arch)(torch.randn(7, 1, 28, 28)).shape == (7, 10)


def test_mac_counts() -> None:
    assert count_macs(InceptionNet()) == 6_019_200
    assert count_macs(ResidualNet()) == 2_013_184


def test_registry_serves_three_models() -> None:
    assert SERVED_MODELS == ("inception", "resnet", "ensemble")
    with pytest.raises(ValueError, match="unknown architecture"):
        build("vgg")


def test_ensemble_is_the_mean_of_member_probabilities() -> None:
    members = [CalibratedClassifier(build(a), t) for a, t in (("inception", 1.3), ("resnet", 0.8))]
    x = torch.randn(5, 1, 28, 28)
    expected = (members[0](x) + members[1](x)) / 2
    with torch.inference_mode():
        assert torch.allclose(Ensemble(members, temperature=1.0)(x), expected, atol=1e-6)
        sharpened = Ensemble(members, temperature=0.5)(x)
    assert torch.allclose(sharpened.sum(1), torch.ones(5))
    assert torch.equal(sharpened.argmax(1), expected.argmax(1))


def test_temperature_fit_recovers_a_known_temperature() -> None:
    torch.manual_seed(0)
    true_logits = torch.randn(20_000, 10) * 3
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    assert fit_temperature(true_logits * 2.0, labels) == pytest.approx(2.0, rel=0.05)


def test_expected_calibration_error() -> None:
    labels = torch.tensor([0, 0, 0, 0])
    perfect = torch.tensor([[1.0, 0.0]] * 4)
    assert expected_calibration_error(perfect, labels) == pytest.approx(0.0)
    # 0.75 confident, right 2 times in 4: a gap of 0.25
    half_right = torch.tensor([[0.75, 0.25], [0.75, 0.25], [0.25, 0.75], [0.25, 0.75]])
    assert expected_calibration_error(half_right, labels) == pytest.approx(0.25)
