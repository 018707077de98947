"""Splitting a written number into digits (core.segment), on drawn shapes and rendered MNIST digits."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.components import components
from core.preprocess import decode_upright
from core.segment import Alternative, Glyph, Piece, Segmentation, best_alternative, segment
from evaluation import mnist, numbers
from tests.conftest import encode_image

LIMIT = 25_000_000


def sheet(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """White paper to draw black strokes on."""
    image = Image.new("L", (width, height), 255)
    return image, ImageDraw.Draw(image)


def segmented(image: Image.Image, fmt: str = "PNG") -> Segmentation:
    """As the server segments an upload: encoded, decoded, then split."""
    return segment(*decode_upright(encode_image(image, fmt), max_pixels=LIMIT))


def wholes(segmentation: Segmentation) -> list[Piece]:
    return [glyph.alternatives[0].pieces[0] for glyph in segmentation.glyphs]


def test_components_match_a_flood_fill() -> None:
    rng = np.random.default_rng(7)
    mask = rng.random((40, 60)) < 0.45
    found = components(mask)
    seen = np.full(mask.shape, -1)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start] >= 0:
            continue
        stack = [start]
        seen[start] = count
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < 40 and 0 <= nx < 60 and mask[ny, nx] and seen[ny, nx] < 0:
                        seen[ny, nx] = count
                        stack.append((ny, nx))
        count += 1
    assert len(found) == count
    assert ((found.labels >= 0) == mask).all()
    pairs = {(int(a), int(b)) for a, b in zip(found.labels[mask], seen[mask], strict=True)}
    assert len(pairs) == count  # the same partition, whatever the numbering
    for label in range(count):
        rows, cols = np.nonzero(found.labels == label)
        assert (found.top[label], found.bottom[label], found.left[label], found.right[label]) == (
            rows.min(),
            rows.max() + 1,
            cols.min(),
            cols.max() + 1,
        )


@pytest.mark.parametrize(
    "blank",
    [
        Image.new("L", (300, 120), 255),
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)),
        Image.new("L", (28, 28), 0),
        Image.new("RGB", (640, 200), (200, 190, 180)),
    ],
    ids=["white paper", "empty canvas", "black 28x28", "grey photo"],
)
def test_a_blank_image_has_no_glyphs(blank: Image.Image) -> None:
    assert segmented(blank).glyphs == ()


def test_digits_standing_apart_are_glyphs_left_to_right_with_their_boxes() -> None:
    image, draw = sheet(400, 160)
    strokes = [(60, 30, 60, 130), (200, 30, 200, 130), (330, 30, 330, 130)]
    for stroke in (strokes[1], strokes[2], strokes[0]):  # drawn out of order
        draw.line(stroke, fill=0, width=10)
    pieces = wholes(segmented(image))
    assert len(pieces) == 3
    for piece, (x, top, _, bottom) in zip(pieces, strokes, strict=True):
        x0, y0, x1, y1 = piece.box
        assert x0 <= x < x1 and x1 - x0 <= 16
        assert abs(y0 - top) <= 6 and abs(y1 - bottom) <= 6
        assert not piece.small
        assert piece.pixels.shape == (28, 28) and piece.pixels.max() > 0.5  # framed as MNIST: 20 px tall


def test_boxes_are_in_the_uploaded_images_pixels() -> None:
    """A large photo is processed reduced; its boxes are scaled back to the upload's size."""
    image, draw = sheet(3000, 900)
    draw.line((600, 150, 600, 750), fill=0, width=40)
    draw.line((2100, 150, 2100, 750), fill=0, width=40)
    pieces = wholes(segmented(image, "JPEG"))
    assert len(pieces) == 2
    for piece, x in zip(pieces, (600, 2100), strict=True):
        x0, y0, x1, y1 = piece.box
        assert x0 - 30 <= x <= x1 + 30 and abs(x0 - (x - 20)) <= 20 and abs(x1 - (x + 20)) <= 20
        assert abs(y0 - 130) <= 30 and abs(y1 - 770) <= 30


def test_boxes_follow_the_exif_orientation() -> None:
    """A JPEG stored sideways with an orientation tag: boxes are given in the upright picture."""
    upright, draw = sheet(400, 200)
    draw.line((100, 40, 100, 160), fill=0, width=12)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    picture, size = decode_upright(buffer.getvalue(), max_pixels=LIMIT)
    assert size == (400, 200)
    (piece,) = wholes(segment(picture, size))
    x0, y0, x1, y1 = piece.box
    assert x0 <= 100 < x1 and abs(y0 - 34) <= 8 and abs(y1 - 166) <= 8


def test_strokes_of_one_digit_are_merged() -> None:
    """A 4 written in two strokes, and a 5 whose flag does not touch its body: one glyph each."""
    image, draw = sheet(420, 200)
    draw.line([(60, 30), (40, 110), (130, 110)], fill=0, width=9)  # the 4's first stroke...
    draw.line([(105, 40), (105, 170)], fill=0, width=9)  # ...and its upright, not touching the first
    draw.line([(260, 40), (250, 100)], fill=0, width=9)  # the 5's body...
    draw.arc((235, 85, 325, 170), 250, 160, fill=0, width=9)
    draw.line([(268, 33), (330, 33)], fill=0, width=9)  # ...and its flag, apart from it
    assert len(components(np.asarray(image) < 128)) >= 4
    pieces = wholes(segmented(image))
    assert len(pieces) == 2
    four, five = pieces
    assert four.box[0] <= 40 and four.box[2] >= 130 and four.box[3] >= 170
    assert five.box[0] <= 240 and five.box[2] >= 325 and five.box[1] <= 30


def test_specks_are_dropped() -> None:
    image, draw = sheet(300, 200)
    draw.line((150, 30, 150, 170), fill=0, width=12)
    for x, y in ((30, 40), (260, 150), (90, 180), (230, 20)):
        draw.ellipse((x, y, x + 4, y + 4), fill=40)
    (piece,) = wholes(segmented(image))
    assert piece.box[0] >= 135 and piece.box[2] <= 165


def test_punctuation_is_a_small_piece() -> None:
    """A dash between digits is kept as a glyph of its own, marked small (it is no digit)."""
    image, draw = sheet(400, 160)
    draw.line((60, 30, 60, 130), fill=0, width=10)
    draw.line((170, 80, 230, 80), fill=0, width=10)
    draw.line((330, 30, 330, 130), fill=0, width=10)
    pieces = wholes(segmented(image))
    assert [piece.small for piece in pieces] == [False, True, False]


@pytest.fixture(scope="module")
def test_digits(data_dir: object) -> mnist.Digits:
    return mnist.load(data_dir, train=False)  # type: ignore[arg-type]


def touching_pair(test_digits: mnist.Digits, first: int, second: int) -> tuple[Image.Image, int]:
    """Two MNIST test digits whose strokes touch, on white; and the column where the second one's ink begins."""
    rng = np.random.default_rng(3)
    line = numbers.number_ink(test_digits.images[[first, second]], 0, rng, 90, 0.45)
    alone = numbers.number_ink(test_digits.images[[second]], -1, np.random.default_rng(3), 90, 0.45)
    page = np.pad(line, 30)
    return Image.fromarray(np.rint(255 * (1 - page)).astype(np.uint8)), 30 + line.shape[1] - alone.shape[1]


def test_a_touching_pair_is_offered_cut_where_the_digits_meet(test_digits: mnist.Digits) -> None:
    zeros = [int(i) for i in np.flatnonzero(test_digits.labels == 0)[:5]]
    for first, second in itertools.pairwise(zeros):
        image, join = touching_pair(test_digits, first, second)
        (glyph,) = segmented(image).glyphs  # one component: the pair touches
        assert len(glyph.alternatives) > 1
        whole = glyph.alternatives[0].pieces[0].box
        cuts = [a.pieces for a in glyph.alternatives[1:]]
        assert all(len(pieces) == 2 for pieces in cuts)
        # one cut parts them about where the second digit starts and the first one ends
        assert any(abs(left.box[2] - join) < 0.15 * (whole[3] - whole[1]) and right.box[0] < left.box[2] + 5 for left, right in cuts)


def test_a_wide_glyph_of_one_component_is_also_offered_whole(test_digits: mnist.Digits) -> None:
    image, _ = touching_pair(test_digits, 3, 10)
    (glyph,) = segmented(image).glyphs
    (whole,) = glyph.alternatives[0].pieces
    left, right = glyph.alternatives[1].pieces
    assert whole.box[0] == min(left.box[0], right.box[0]) and whole.box[2] == max(left.box[2], right.box[2])


def piece(small: bool = False) -> Piece:
    return Piece(np.zeros((28, 28), np.float32), (0, 0, 1, 1), small)


def test_the_surest_reading_wins() -> None:
    glyph = Glyph((Alternative((piece(),)), Alternative((piece(), piece())), Alternative((piece(), piece()))))
    assert best_alternative(glyph, [0.97, 0.8, 0.8, 0.99, 0.95]) == 0  # the whole is sure: two halves must beat it together
    assert best_alternative(glyph, [0.1, 0.8, 0.8, 0.99, 0.95]) == 2
    assert best_alternative(glyph, [0.1, 0.9, 0.9, 0.99, 0.5]) == 1


def test_a_cut_leaving_a_small_piece_loses() -> None:
    glyph = Glyph((Alternative((piece(),)), Alternative((piece(), piece(small=True)))))
    assert best_alternative(glyph, [0.05, 0.99, 0.99]) == 0
