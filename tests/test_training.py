"""A training smoke run on a small subset writes a loadable checkpoint and valid metadata."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.digit_rule import TEMPERATURES
from models import evaluate, train
from models.checkpoint import CheckpointError, load_classifier, sha256_file
from models.data import AugmentedDigits
from models.registry import ARCHITECTURES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("weights")
    for arch in ARCHITECTURES:
        argv = ["--arch", arch, "--epochs", "1", "--train-limit", "640", "--batch-size", "64", "--workers", "0", "--from-scratch"]
        assert train.main([*argv, "--data-dir", str(data_dir), "--no-download", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_checkpoint_is_a_plain_state_dict_matching_its_metadata(trained: Path, arch: str) -> None:
    state = torch.load(trained / f"{arch}.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    meta = json.loads((trained / f"{arch}.json").read_text())
    assert meta["sha256"] == sha256_file(trained / f"{arch}.pt")
    assert meta["file_size_bytes"] == (trained / f"{arch}.pt").stat().st_size
    assert meta["parameters"] == {"inception": 97_298, "resnet": 41_514}[arch]
    assert meta["recipe"]["epochs"] == 1 and meta["recipe"]["train_limit"] == 640
    assert meta["data"] == {"train_images": 640, "val_images": 5000, "test_images": 10_000}
    assert 0.0 <= meta["metrics"]["test_accuracy"] <= 1.0
    assert len(meta["metrics"]["confusion_matrix"]) == 10
    assert sum(map(sum, meta["metrics"]["confusion_matrix"])) == 10_000
    assert meta["calibration"]["temperature"] > 0
    assert {"torch", "torchvision", "date"} <= set(meta["environment"])
    assert len(meta["history"]) == 1 and meta["best_epoch"] == 1
    assert (trained / f"{arch}-curves.png").stat().st_size > 0
    assert (trained / f"{arch}-confusion.png").stat().st_size > 0
    model, _ = load_classifier(trained, arch)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_ensemble_is_calibrated_for_the_exact_members(trained: Path) -> None:
    meta = json.loads((trained / "ensemble.json").read_text())
    assert meta["members"] == {arch: sha256_file(trained / f"{arch}.pt") for arch in ARCHITECTURES}
    assert meta["calibration"]["temperature"] > 0


def test_evaluate_accepts_intact_weights_and_rejects_tampered_ones(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    args = ["--data-dir", str(data_dir), "--no-download"]
    assert evaluate.main(["--weights-dir", str(trained), *args]) == 0

    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for file in trained.glob("*.*"):
        (tampered / file.name).write_bytes(file.read_bytes())
    data = bytearray((tampered / "resnet.pt").read_bytes())
    data[-100] ^= 0xFF
    (tampered / "resnet.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"resnet\.pt has sha256"):
        load_classifier(tampered, "resnet")
    result = subprocess.run(
        [sys.executable, "-m", "models.evaluate", "--weights-dir", str(tampered), *args], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "resnet.pt has sha256" in result.stderr


def test_distillation_records_its_teacher(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    argv = ["--arch", "inception", "--epochs", "1", "--train-limit", "640", "--batch-size", "64", "--workers", "0", "--grad-clip", "5"]
    teacher = ["--teacher", "resnet", "--teacher-dir", str(trained), "--distill-weight", "0.5", "--distill-temperature", "2"]
    assert train.main([*argv, *teacher, "--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "inception.json").read_text())
    assert meta["teacher"] == {"name": "resnet", "sha256": sha256_file(trained / "resnet.pt")}
    assert (meta["recipe"]["distill_weight"], meta["recipe"]["distill_temperature"], meta["recipe"]["grad_clip"]) == (0.5, 2.0, 5.0)


def test_distillation_loss_is_zero_when_the_student_matches_the_teacher() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 1])
    recipe = train.Recipe("inception", distill_weight=1.0, distill_temperature=2.0)
    assert float(train._loss(recipe, logits, labels, torch.softmax(logits, 1))) == pytest.approx(0.0, abs=1e-6)
    assert float(train._loss(recipe, logits, labels, torch.softmax(-logits, 1))) > 0.1


def test_the_last_clean_epochs_see_unaugmented_images(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    augmented_items: list[bool] = []
    getitem = AugmentedDigits.__getitem__

    def recording_getitem(self: AugmentedDigits, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        augmented_items.append(self.transform is not None)
        return getitem(self, index)

    monkeypatch.setattr(AugmentedDigits, "__getitem__", recording_getitem)
    argv = ["--arch", "resnet", "--epochs", "3", "--clean-epochs", "1", "--train-limit", "128", "--batch-size", "64", "--workers", "0"]
    argv += ["--from-scratch"]
    assert train.main([*argv, "--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)]) == 0
    assert augmented_items == [True] * 256 + [False] * 128  # 128 images per epoch
    assert json.loads((tmp_path / "resnet.json").read_text())["recipe"]["clean_epochs"] == 1


def test_fine_tuning_records_its_init_and_fits_is_digit(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    init = trained / "resnet.pt"
    argv = ["--arch", "resnet", "--epochs", "1", "--train-limit", "128", "--batch-size", "64", "--workers", "0", "--init", str(init)]
    robust = ["--lowres-p", "0.5", "--binarise-p", "0.5", "--thumbnail-p", "0.5", "--outlier-fraction", "0.25", "--outlier-weight", "0.5"]
    robust += ["--selection", "mixed"]
    assert train.main([*argv, *robust, "--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "resnet.json").read_text())
    assert meta["recipe"]["init_sha256"] == sha256_file(init)
    assert meta["recipe"]["selection"] == "mixed" and meta["recipe"]["outlier_weight"] == 0.5
    assert meta["command"].startswith("python -m models.train --arch resnet") and str(init) in meta["command"]
    assert set(meta["history"][0]) >= {"val_degraded_accuracy", "val_mixed_accuracy", "val_nondigits_rejected"}
    block = meta["is_digit"]
    assert block["score"] in {"max_probability", "one_minus_normalised_entropy"} and 0 < block["threshold"] <= 1
    assert block["temperature"] in TEMPERATURES
    by_candidate = block["validation_non_digits_rejected_by_candidate"]
    assert len(by_candidate) == 2 * len(TEMPERATURES)  # every score at every temperature
    chosen = by_candidate[f"{block['score']} at temperature {block['temperature']:g}"]
    assert chosen == max(by_candidate.values()) == block["validation"]["non_digits_rejected"]
    assert meta["recipe"]["aug_thumbnail_p"] == 0.5
    assert block["validation"]["digits_rejected"] <= 0.005
    assert {"digits_rejected", "non_digits_rejected"} <= set(block["test"])


def test_fine_tuning_refuses_another_init_than_the_recipes(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    recipe = dataclasses.replace(train.DEFAULT_RECIPES["resnet"], init_sha256="0" * 64, epochs=1, train_limit=64)
    with pytest.raises(SystemExit, match="sha256"):
        train.train(recipe, data_dir, False, tmp_path, 0, init=trained / "resnet.pt")
    with pytest.raises(SystemExit, match="--init"):
        train.train(recipe, data_dir, False, tmp_path, 0)


def test_outlier_loss_is_smallest_for_a_uniform_output() -> None:
    uniform, confident = torch.zeros(1, 10), torch.tensor([[10.0] + [0.0] * 9])
    assert float(train.outlier_loss(uniform)) == pytest.approx(float(torch.log(torch.tensor(10.0))))
    assert float(train.outlier_loss(confident)) > float(train.outlier_loss(uniform))
