"""Training smoke runs on a small subset write a loadable checkpoint and valid metadata; the
recipe's flags, its init check and its record in the metadata."""

import argparse
import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from core.digit_rule import TEMPERATURES
from models import evaluate, train
from models.checkpoint import CheckpointError, load_classifier, sha256_file
from models.data import AugmentedBatches, AugmentedDigits
from models.registry import ARCHITECTURES
from models.training.loop import outlier_loss
from models.training.recipe import DEFAULT_RECIPES, Init, Recipe, add_recipe_flags, recipe_from_flags

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("weights")
    for arch in ARCHITECTURES:
        argv = ["--arch", arch, "--epochs", "1", "--train-limit", "640", "--batch-size", "64", "--workers", "0", "--init-sha256", "none"]
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
    assert meta["recipe"]["schedule"]["epochs"] == 1 and meta["recipe"]["data"]["train_limit"] == 640
    assert Recipe.from_json(meta["recipe"]).optimisation.batch_size == 64
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


@pytest.mark.parametrize("mode", ["per_image", "batched"])
def test_the_last_clean_epochs_see_unaugmented_images(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], mode: str
) -> None:
    augmented_items: list[bool] = []
    getitem, batch_getitem = AugmentedDigits.__getitem__, AugmentedBatches.__getitem__

    def recording_getitem(self: AugmentedDigits, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        augmented_items.append(self.transform is not None)
        return getitem(self, index)

    def recording_batch(self: AugmentedBatches, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        augmented_items.extend([True] * len(indices))
        return batch_getitem(self, indices)

    monkeypatch.setattr(AugmentedDigits, "__getitem__", recording_getitem)
    monkeypatch.setattr(AugmentedBatches, "__getitem__", recording_batch)
    argv = ["--arch", "resnet", "--epochs", "3", "--clean-epochs", "1", "--train-limit", "128", "--batch-size", "64", "--workers", "0"]
    argv += ["--init-sha256", "none", "--strokes-fraction", "0", "--mode", mode]
    assert train.main([*argv, "--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)]) == 0
    assert augmented_items == [True] * 256 + [False] * 128  # 128 images per epoch
    meta = json.loads((tmp_path / "resnet.json").read_text())
    assert meta["recipe"]["schedule"]["clean_epochs"] == 1 and meta["recipe"]["augmentation"]["mode"] == mode
    printed = capsys.readouterr().out.replace(str(tmp_path), "OUT")
    assert f"val {100 * meta['metrics']['val_accuracy']:.2f}%" in printed
    assert "test" not in printed.lower()  # the test figures go into the metadata only


def test_fine_tuning_records_its_init_and_fits_is_digit(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    init = trained / "resnet.pt"
    argv = ["--arch", "resnet", "--epochs", "1", "--train-limit", "128", "--batch-size", "64", "--workers", "0"]
    argv += ["--init", str(init), "--init-sha256", sha256_file(init)]
    robust = ["--lowres-p", "0.5", "--binarise-p", "0.5", "--thumbnail-p", "0.5", "--outlier-fraction", "0.25", "--outlier-weight", "0.5"]
    robust += ["--selection-rule", "mixed"]
    assert train.main([*argv, *robust, "--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "resnet.json").read_text())
    recipe = meta["recipe"]
    assert recipe["init"]["sha256"] == sha256_file(init)
    assert recipe["selection"]["rule"] == "mixed" and recipe["outliers"]["weight"] == 0.5
    assert recipe["degradations"]["thumbnail_p"] == 0.5
    assert meta["command"].startswith("python -m models.train --arch resnet") and str(init) in meta["command"]
    assert set(meta["history"][0]) >= {"val_degraded_accuracy", "val_strokes_accuracy", "val_mixed_accuracy", "val_nondigits_rejected"}
    block = meta["is_digit"]
    assert block["score"] in {"max_probability", "one_minus_normalised_entropy"} and 0 < block["threshold"] <= 1
    assert block["temperature"] in TEMPERATURES
    by_candidate = block["validation_non_digits_rejected_by_candidate"]
    assert len(by_candidate) == 2 * len(TEMPERATURES)  # every score at every temperature
    chosen = by_candidate[f"{block['score']} at temperature {block['temperature']:g}"]
    assert chosen == max(by_candidate.values()) == block["validation"]["non_digits_rejected"]
    assert block["validation"]["digits_rejected"] <= 0.005 and block["validation"]["drawn_digits_rejected"] <= 0.01
    assert {"digits_rejected", "non_digits_rejected"} <= set(block["test"])


def test_an_init_other_than_the_recipes_is_refused(trained: Path, data_dir: Path, tmp_path: Path) -> None:
    """The recipe names its init by sha256; another file trains only when the recipe is changed to name it."""
    other = trained / "resnet.pt"
    actual = sha256_file(other)
    common = [
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--workers",
        "0",
        "--data-dir",
        str(data_dir),
        "--no-download",
        "--out",
        str(tmp_path),
    ]
    named = ["--init-sha256", "0" * 64]  # a recipe that fine-tunes from some other checkpoint
    with pytest.raises(SystemExit, match=rf"has sha256 {actual}, but the recipe fine-tunes from {'0' * 64}"):
        train.main(["--arch", "resnet", "--init", str(other), *named, *common])
    with pytest.raises(SystemExit, match=rf"--init-sha256 {actual}"):  # the message says how to change the recipe
        train.main(["--arch", "inception", "--init", str(other), *common])
    with pytest.raises(SystemExit, match="pass that file as --init FILE"):
        train.main(["--arch", "resnet", *named, *common])
    recipe = dataclasses.replace(DEFAULT_RECIPES["resnet"], init=dataclasses.replace(DEFAULT_RECIPES["resnet"].init, sha256="0" * 64))
    with pytest.raises(SystemExit, match="sha256"):
        train.train(recipe, data_dir, False, tmp_path, 0, init=other)
    assert not list(tmp_path.iterdir())  # refused before anything was trained or written


def _recipe_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_recipe_flags(parser)
    return parser


def _sections(recipe: Recipe) -> dict[str, Any]:
    return {field.name: getattr(recipe, field.name) for field in dataclasses.fields(recipe)}


def _another_value(action: argparse.Action, value: Any) -> tuple[list[str], Any]:
    """Command-line words that set ``action``'s field to a value other than ``value``, and what they parse to."""
    flag, *other_flags = action.option_strings
    if isinstance(value, bool):  # --flag / --no-flag
        return [other_flags[0] if value else flag], not value
    words, parsed = _another_argument(value, list(action.choices) if action.choices else None)
    return [flag, *words], parsed


def _another_argument(value: Any, choices: list[str] | None) -> tuple[list[str], Any]:
    if choices:
        other = next(choice for choice in choices if choice != value)
        return [other], other
    if isinstance(value, tuple):
        return [str(v + 1) for v in value], tuple(v + 1 for v in value)
    if isinstance(value, str):
        return ["ab" * 32], "ab" * 32
    if value is None:
        return ["3"], 3
    return [str(value + 1)], value + 1


def test_every_hyperparameter_has_one_flag_that_sets_only_it() -> None:
    parser = _recipe_parser()
    base = dataclasses.replace(DEFAULT_RECIPES["resnet"], init=Init(sha256="0" * 64))  # a string to change
    flags = [action for action in parser._actions if action.dest != "help"]
    recipe_fields = [
        (section, field.name) for section, value in _sections(base).items() if section != "arch" for field in dataclasses.fields(value)
    ]
    assert sorted(action.dest for action in flags) == sorted(f"{s}.{f}" for s, f in recipe_fields)
    for action in flags:
        section, field = action.dest.split(".")
        assert action.help and "[default:" in action.help
        words, parsed = _another_value(action, getattr(getattr(base, section), field))
        changed = recipe_from_flags(base, parser.parse_args(words))
        expected = dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **{field: parsed})})
        assert changed == expected, action.option_strings[0]
    assert recipe_from_flags(base, parser.parse_args([])) == base


def test_an_optional_hyperparameter_takes_none() -> None:
    args = _recipe_parser().parse_args(["--grad-clip", "none", "--init-sha256", "none"])
    recipe = recipe_from_flags(DEFAULT_RECIPES["inception"], args)
    assert recipe.optimisation.grad_clip is None and recipe.init.sha256 is None
    assert DEFAULT_RECIPES["inception"].optimisation.grad_clip == 5.0


def test_a_recipe_reads_back_from_its_metadata() -> None:
    for recipe in DEFAULT_RECIPES.values():
        assert Recipe.from_json(json.loads(json.dumps(dataclasses.asdict(recipe)))) == recipe
    with pytest.raises(ValueError, match="not a recorded recipe"):
        Recipe.from_json({"arch": "resnet", "epochs": 15})  # a flat record: no sections


def test_recipe_flags_are_refused_outside_training(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        train.main(["--arch", "ensemble", "--epochs", "3", "--out", str(tmp_path)])
    assert exited.value.code == 2


def test_outlier_loss_is_smallest_for_a_uniform_output() -> None:
    uniform, confident = torch.zeros(1, 10), torch.tensor([[10.0] + [0.0] * 9])
    assert float(outlier_loss(uniform)) == pytest.approx(float(torch.log(torch.tensor(10.0))))
    assert float(outlier_loss(confident)) > float(outlier_loss(uniform))
