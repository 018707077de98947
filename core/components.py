"""8-connected components of a boolean mask, found from its horizontal runs, and the mask grown by a pixel.

Pure numpy: the runs of every row come from one difference, the runs that touch across
consecutive rows from two binary searches, and the components from label propagation over
those links, so no Python loop visits pixels.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["Components", "components", "dilated"]


@dataclass(frozen=True)
class Components:
    """8-connected components of a mask: ``labels`` (-1 = background, else the index) and per
    component its bounding box (``top``, ``bottom``, ``left``, ``right``, ends exclusive)."""

    labels: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    def __len__(self) -> int:
        return len(self.top)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The horizontal runs of a boolean mask, row-major: row, first column, column after the last."""
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return rows, starts, ends


def _run_links(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of runs on consecutive rows that touch, diagonals included (8-connectivity).

    Runs are ordered by (row, column) and do not overlap within a row, so as keys
    ``row * stride + column`` both their starts and their ends increase: the runs of the next
    row that a run touches are one contiguous range, found by two binary searches.
    """
    stride = width + 2
    start_keys = rows * stride + starts
    end_keys = rows * stride + ends
    below = (rows + 1) * stride
    first = np.searchsorted(end_keys, below + starts, side="left")  # the first whose end reaches this start
    last = np.searchsorted(start_keys, below + ends, side="right")  # past the last starting by this end
    counts = np.maximum(last - first, 0)
    upper = np.repeat(np.arange(len(rows)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return upper, np.repeat(first, counts) + offsets


def _connected(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Component index (0..k-1, in order of first node) of ``count`` nodes joined by edges a-b.

    Each node takes the smallest label among its edges, then the label that label names
    (pointer jumping), until nothing changes.
    """
    labels = np.arange(count)
    while True:
        smaller = np.minimum(labels[a], labels[b])
        joined = labels.copy()
        np.minimum.at(joined, a, smaller)
        np.minimum.at(joined, b, smaller)
        joined = joined[joined]
        if np.array_equal(joined, labels):
            break
        labels = joined
    return np.unique(labels, return_inverse=True)[1]


def components(mask: np.ndarray) -> Components:
    """8-connected components of a boolean mask, from its runs (no per-pixel Python)."""
    height, width = mask.shape
    rows, starts, ends = _runs(mask)
    if len(rows) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Components(np.full(mask.shape, -1, dtype=np.int32), empty, empty, empty, empty)
    run_label = _connected(len(rows), *_run_links(rows, starts, ends, width))
    count = int(run_label.max()) + 1
    marks = np.zeros((height, width + 1), dtype=np.int32)  # +label at a run's start, -label after its end
    np.add.at(marks, (rows, starts), run_label + 1)
    np.add.at(marks, (rows, ends), -(run_label + 1))
    labels = np.cumsum(marks, axis=1)[:, :width] - 1
    top = np.full(count, height)
    bottom = np.zeros(count, dtype=np.int64)
    left = np.full(count, width)
    right = np.zeros(count, dtype=np.int64)
    np.minimum.at(top, run_label, rows)
    np.maximum.at(bottom, run_label, rows + 1)
    np.minimum.at(left, run_label, starts)
    np.maximum.at(right, run_label, ends)
    return Components(labels.astype(np.int32), top, bottom, left, right)


def dilated(mask: np.ndarray) -> np.ndarray:
    """A boolean mask grown by a pixel on every side, diagonals included (a 3x3 maximum, in two passes)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    grown = rows.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown
