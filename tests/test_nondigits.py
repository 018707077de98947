"""The synthetic non-digits: seeded, every kind renders, no digit-like glyph, no torch."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from models import nondigits
from models.nondigits import EXCLUDED_GLYPHS, GLYPHS, KINDS, nondigit_pool, render_kind, render_nondigit

ROOT = Path(__file__).resolve().parent.parent
DIGITS = np.zeros((3, 28, 28), dtype=np.uint8)
DIGITS[:, 6:22, 12:16] = 255


def test_a_seed_gives_the_same_pool() -> None:
    first, second = nondigit_pool(40, 7, DIGITS), nondigit_pool(40, 7, DIGITS)
    assert first.shape == (40, 28, 28) and first.dtype == np.uint8
    assert np.array_equal(first, second)
    assert not np.array_equal(first, nondigit_pool(40, 8, DIGITS))


def test_the_seeds_of_training_validation_and_evaluation_differ() -> None:
    assert len({nondigits.TRAIN_SEED, nondigits.VALIDATION_SEED, nondigits.EVALUATION_SEED}) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_ink_at_a_realistic_size(kind: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        image = render_kind(kind, rng, DIGITS)
        assert isinstance(image, Image.Image)
        assert max(image.size) >= 42
        values = np.asarray(image.convert("L"), dtype=np.int16)
        assert values.max() - values.min() > 50


def test_pool_images_are_in_the_models_form() -> None:
    pool = nondigit_pool(50, 1, DIGITS)
    assert (pool.reshape(50, -1).max(axis=1) > 50).all()  # every image has ink after to_mnist


def test_no_excluded_glyph_is_ever_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[str] = []
    original = ImageDraw.ImageDraw.text

    def recording_text(self: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, *args: object, **kwargs: object) -> None:
        drawn.append(text)
        original(self, xy, text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", recording_text)
    rng = np.random.default_rng(3)
    for _ in range(200):
        render_nondigit(rng, DIGITS)
    characters = set("".join(drawn)) - {" "}
    assert characters, "no text was drawn"
    assert characters <= set(GLYPHS)
    assert not characters & EXCLUDED_GLYPHS
    assert set("0123456789OolISZBgq") <= EXCLUDED_GLYPHS


def test_a_missing_font_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(nondigits, "FONT_DIR", tmp_path)
    nondigits._font.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="fonts-dejavu-core"):
            render_kind("letters", np.random.default_rng(0))
    finally:
        nondigits._font.cache_clear()


def test_nondigits_and_outliers_import_without_torch() -> None:
    code = "import sys, models.nondigits, core.digit_rule; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
