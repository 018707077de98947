"""The stroke synthesiser: deterministic per (seed, index), every style framed as MNIST frames a
digit, its degradations, its one recipe flag, and its digits mixed into a real training run."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.preprocess import INK_THRESHOLD
from models import stroke_report, strokes, train
from models.data import AugmentedDigits, normalise
from models.stroke_glyphs import VARIANTS, Variant
from models.strokes import StrokeDigits, render, synthesise, variants_of
from models.training.loop import _stroke_batches
from models.training.recipe import DEFAULT_RECIPES

ROOT = Path(__file__).resolve().parent.parent


def _ink_box(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the pixels with ink."""
    rows, cols = np.flatnonzero(image.max(axis=1) > 0), np.flatnonzero(image.max(axis=0) > 0)
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def _assert_mnist_framed(image: np.ndarray, name: str) -> None:
    """28 x 28 in [0, 1] with a peak of 1; the ink's longer side 20 px; centred by mass within a pixel."""
    assert image.shape == (28, 28) and image.dtype == np.float32, name
    assert image.min() >= 0.0 and image.max() == pytest.approx(1.0), name
    assert max(_ink_box(image)) == 20, f"{name}: ink box {_ink_box(image)}"
    ys, xs = np.indices(image.shape)
    centre = np.array([(ys * image).sum(), (xs * image).sum()]) / image.sum()
    assert np.abs(centre - 13.5).max() <= 1.0, f"{name}: centre of mass {centre}"


def test_an_item_is_the_same_for_the_same_seed_and_index_only() -> None:
    first, again = synthesise(7, 123), synthesise(7, 123)
    assert first[1] == again[1] == 3  # the label is index % 10
    assert np.array_equal(first[0], again[0])
    assert not np.array_equal(first[0], synthesise(8, 123)[0])
    assert not np.array_equal(first[0], synthesise(7, 133)[0])  # the same class, another drawing
    pool, shifted = StrokeDigits(20, seed=7), StrokeDigits(5, seed=7, offset=15)
    assert torch.equal(pool[17][0], shifted[2][0]) and int(pool[17][1]) == int(shifted[2][1]) == 7
    assert torch.equal(pool[3][0], torch.from_numpy(synthesise(7, 3)[0]).unsqueeze(0))


def test_the_dataset_yields_float_images_in_the_unit_range_and_int64_labels() -> None:
    pool = StrokeDigits(10, seed=0)
    assert len(pool) == 10
    labels = []
    for image, label in (pool[i] for i in range(len(pool))):
        assert image.shape == (1, 28, 28) and image.dtype == torch.float32
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert label.dtype == torch.int64
        labels.append(int(label))
    assert labels == list(range(10))
    with pytest.raises(IndexError):
        pool[10]


def test_a_transform_receives_each_drawing_as_uint8_and_its_answer_is_the_item() -> None:
    seen: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def inverted(image: torch.Tensor) -> torch.Tensor:
        seen.append((image.dtype, tuple(image.shape)))
        return 255 - image

    plain, transformed = StrokeDigits(3, seed=5), StrokeDigits(3, seed=5, transform=inverted)
    image, label = transformed[1]
    assert seen == [(torch.uint8, (1, 28, 28))]
    assert torch.equal(image, 255 - (plain[1][0] * 255).round().to(torch.uint8))
    assert int(label) == int(plain[1][1])


def test_strokes_degraded_sends_the_synthesised_digits_through_the_recipes_degradations() -> None:
    base = DEFAULT_RECIPES["resnet"]
    every_image = dataclasses.replace(base.degradations, thumbnail_p=1.0)

    def first_batch(degraded: bool) -> torch.Tensor:
        recipe = dataclasses.replace(base, data=dataclasses.replace(base.data, strokes_degraded=degraded), degradations=every_image)
        images, labels = next(_stroke_batches(recipe, per_batch=4, steps=1, workers=0))
        assert labels.tolist() == [0, 1, 2, 3]
        return normalise(images)

    pool = StrokeDigits(4, seed=base.optimisation.seed)
    drawn = normalise(torch.stack([pool[i][0] for i in range(4)]))
    torch.manual_seed(0)
    assert torch.equal(first_batch(False), drawn)
    assert not torch.equal(first_batch(True), drawn)


def test_every_class_has_several_styles_including_those_mnist_lacks() -> None:
    assert all(len(variants_of(label)) >= 2 for label in range(10))
    names = {variant.name for variant in VARIANTS}
    assert {"1 plain", "1 flag", "1 flag and foot", "7 plain", "7 crossed", "4 open top", "4 closed top"} <= names
    assert {"9 straight tail", "9 curved tail", "2 plain", "2 loop", "6 open", "6 closed", "8 open", "0 open"} <= names
    european = {variant.name for variant in VARIANTS if variant.european}
    assert european == {"1 flag", "1 flag and foot", "7 crossed", "4 open top", "9 curved tail"}
    assert len(names) == len(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant.name for variant in VARIANTS])
def test_every_style_renders_a_digit_framed_as_mnist(variant: Variant) -> None:
    for i in range(5):
        _assert_mnist_framed(render(variant, np.random.default_rng((11, i))), variant.name)
    stretched = render(variant, np.random.default_rng((12, 0)), stretched=True)
    _assert_mnist_framed(stretched, f"{variant.name}, stretched")
    height, width = _ink_box(stretched > INK_THRESHOLD)
    assert min(height, width) >= 18, f"{variant.name}: a stretched digit fills its box, not {height}x{width}"
    _assert_mnist_framed(render(variant, np.random.default_rng((13, 0)), marker=True), f"{variant.name}, marker")


def test_a_marker_lays_down_more_ink_than_a_pen() -> None:
    pen = [render(variant, np.random.default_rng((14, i))).sum() for variant in VARIANTS for i in range(3)]
    marker = [render(variant, np.random.default_rng((14, i)), marker=True).sum() for variant in VARIANTS for i in range(3)]
    assert np.mean(marker) > 1.4 * np.mean(pen)


def test_normalise_reads_float_intensities_as_uint8_ones() -> None:
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).repeat(1, 2, 2)[:, :28, :28]
    assert torch.allclose(normalise(levels), normalise(levels.float() / 255.0))


def test_the_recipe_flag_exists_exactly_once_and_the_committed_nets_record_their_share() -> None:
    parser = train.build_parser()
    options = [option for action in parser._actions for option in action.option_strings]
    assert options.count("--strokes-fraction") == 1
    assert parser.format_help().count("--strokes-fraction") == 1
    for arch, recipe in DEFAULT_RECIPES.items():
        recorded = json.loads((ROOT / "weights" / f"{arch}.json").read_text())["recipe"]["data"]["strokes_fraction"]
        assert recorded == recipe.data.strokes_fraction
    assert DEFAULT_RECIPES["resnet"].data.strokes_fraction > 0


def test_a_training_run_mixes_synthesised_digits_into_every_batch(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    mnist_items = 0
    getitem, mnist_getitem = StrokeDigits.__getitem__, AugmentedDigits.__getitem__

    def recording(self: StrokeDigits, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        drawn.append(self.offset + index)
        return getitem(self, index)

    def counting(self: AugmentedDigits, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal mnist_items
        mnist_items += 1
        return mnist_getitem(self, index)

    monkeypatch.setattr(StrokeDigits, "__getitem__", recording)
    monkeypatch.setattr(AugmentedDigits, "__getitem__", counting)
    argv = ["--arch", "resnet", "--epochs", "2", "--train-limit", "640", "--batch-size", "64", "--workers", "0"]
    argv += ["--init-sha256", "none", "--strokes-fraction", "0.5", "--mode", "per_image"]
    argv += ["--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)]
    assert train.main(argv) == 0
    # Each batch of 64: 32 MNIST images and 32 synthesised digits, so 20 steps per pass over the 640 images.
    assert mnist_items == 2 * 640
    assert drawn == list(range(2 * 20 * 32))  # fresh digits for every step of both epochs
    meta = json.loads((tmp_path / "resnet.json").read_text())
    assert meta["recipe"]["data"]["strokes_fraction"] == 0.5
    assert len(meta["history"]) == 2 and meta["data"]["train_images"] == 640


def test_a_fraction_that_leaves_no_mnist_images_is_refused(data_dir: Path, tmp_path: Path) -> None:
    argv = ["--arch", "resnet", "--epochs", "1", "--train-limit", "64", "--batch-size", "64", "--workers", "0", "--init-sha256", "none"]
    with pytest.raises(SystemExit, match="leaves no MNIST images in a batch of 64"):
        train.main([*argv, "--strokes-fraction", "1", "--data-dir", str(data_dir), "--no-download", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_the_commands_write_the_sample_grid_and_the_scores(tmp_path: Path) -> None:
    png, scores = tmp_path / "samples.png", tmp_path / "strokes.json"
    assert strokes.main(["--samples", str(png), "--score", str(scores), "--per-variant", "4"]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    result = json.loads(scores.read_text())
    assert [row["variant"] for row in result["variants"]] == [variant.name for variant in VARIANTS]
    assert [row["degradation"] for row in result["degradations"]] == list(stroke_report.DEGRADATIONS)
    for row in result["variants"] + result["degradations"]:
        assert row["images"] == 4
        assert set(row["accuracy"]) == {"inception", "resnet", "ensemble"}
        assert all(0.0 <= value <= 1.0 for value in row["accuracy"].values())
        misread = sum(row["ensemble_misread_as"].values())
        assert misread == pytest.approx(1.0 - row["accuracy"]["ensemble"], abs=1e-3)
    assert result["weights_sha256"]["resnet"] == json.loads((ROOT / "weights" / "resnet.json").read_text())["sha256"]


def test_the_committed_scores_cover_every_style() -> None:
    result = json.loads((ROOT / "evaluation" / "results" / "strokes.json").read_text())
    assert [row["variant"] for row in result["variants"]] == [variant.name for variant in VARIANTS]
    assert result["per_variant"] == 2000 and result["command"].startswith("python -m models.strokes --score")
    for arch in ("inception", "resnet"):
        assert result["weights_sha256"][arch] == json.loads((ROOT / "weights" / f"{arch}.json").read_text())["sha256"]
