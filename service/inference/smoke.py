"""A fixed batch that new weights must read before they are served: ten digits drawn as pen strokes.

The checkpoint's sha256 proves the file is the one its metadata names, not that the metadata
names a good network: weights trained on shuffled labels, a wrong architecture's tensors of
the same shapes, or a half-finished run pass every hash. These digits are drawn from
polylines in code (no font, no data set) at three sizes and two slants, and go through the
same preprocessing as an upload, so a network that reads MNIST reads nearly all of them.
"""

from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from core.preprocess import to_mnist

__all__ = ["SMOKE_MIN_ACCURACY", "smoke_batch"]

SMOKE_MIN_ACCURACY = 0.9  # the committed networks read 59 or 60 of the 60 (tests/test_repository.py)

# Each digit as strokes on a 0-10 grid (x right, y down), as a person writes it.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [[(5, 1), (2.5, 2.5), (2, 5), (2.5, 7.5), (5, 9), (7.5, 7.5), (8, 5), (7.5, 2.5), (5, 1)]],
    1: [[(3.5, 3), (5.5, 1), (5.5, 9)]],
    2: [[(2.5, 3), (4, 1.2), (6.5, 1.2), (7.5, 3), (6.5, 5), (2.5, 9), (8, 9)]],
    3: [[(2.5, 1.5), (7, 1.5), (4.5, 4.5), (7, 5.5), (7.5, 7.5), (5.5, 9), (2.5, 8.5)]],
    4: [[(6.5, 9), (6.5, 1), (2, 6.5), (8.5, 6.5)]],
    5: [[(7.5, 1), (3, 1), (2.5, 4.5), (5.5, 4), (7.5, 5.5), (7.5, 7.5), (5.5, 9), (2.5, 8.5)]],
    6: [[(7, 1), (4.5, 2), (2.5, 5), (2.5, 7.5), (4.5, 9), (6.5, 8.5), (7.5, 7), (6.5, 5.2), (4.5, 5), (2.5, 6.5)]],
    7: [[(2, 1.2), (8, 1.2), (4.5, 9)]],
    8: [[(5, 5), (2.8, 3.2), (5, 1), (7.2, 3.2), (5, 5), (2.5, 7), (5, 9), (7.5, 7), (5, 5)]],
    9: [[(7.5, 4), (5, 5.5), (2.5, 4), (2.8, 1.8), (5, 1), (7.2, 2), (7.5, 4), (7, 9)]],
}
SIZES = (64, 100, 160)
SLANTS = (0.0, 0.2)  # a shear, as a right-leaning hand


def _drawn(strokes: list[list[tuple[float, float]]], size: int, slant: float) -> np.ndarray:
    picture = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(picture)
    scale = size / 10
    for stroke in strokes:
        points = [((x + slant * (5 - y)) * scale, y * scale) for x, y in stroke]
        draw.line(points, fill=255, width=max(2, size // 12), joint="curve")
    return to_mnist(picture)


@cache
def smoke_batch() -> tuple[np.ndarray, np.ndarray]:
    """N x 1 x 28 x 28 float32 images in [0, 1] and their N labels."""
    images, labels = [], []
    for label, strokes in STROKES.items():
        for size in SIZES:
            for slant in SLANTS:
                images.append(_drawn(strokes, size, slant))
                labels.append(label)
    return np.stack(images)[:, None].astype(np.float32), np.array(labels)
