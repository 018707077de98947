"""A written number split into its digits, each framed as MNIST frames a digit.

The ink is found as for one digit (``core.preprocess.ink_map``: the same background removal
as ``/predict``), at a scale that keeps a wide line of digits legible. Then:

1. strokes are the ink above STROKE_LEVEL, grouped into 8-connected components;
2. specks (components far smaller than the tallest one) are dropped;
3. components that overlap horizontally are one glyph: a digit written in several strokes
   (a 5's flag, a 4's two strokes) lies within one column span, while the digits of a
   number stand side by side; a broken-off end of a stroke joins any glyph it overlaps;
4. a glyph may be two digits that touch. One wider than SPLIT_WIDTH of the line's height is
   offered whole and also parted in two in up to CUTS ways: along the top-to-bottom seams
   that cross the least ink (dynamic programming), and where the strokes meet (eroded
   until they fall apart, each stroke pixel then given to the nearer part). Which reading
   wins is the classifier's to say (``best_alternative``): segmentation proposes, and the
   caller scores every proposal of every image in one batched call;
5. every piece is framed as MNIST frames a digit (``core.preprocess.frame_digit``); one
   less than SMALL_GLYPH of the line's height is marked small (a point, a comma, a dash).

Boxes are given in the uploaded image's pixels. Torch-free: numpy and Pillow only.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from core.components import Components, components, dilated
from core.preprocess import INK_THRESHOLD, PROCESS_SIZE, frame_digit, ink_map

__all__ = ["Alternative", "Glyph", "Piece", "Segmentation", "best_alternative", "segment"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1: left, top, right, bottom edges (x1, y1 exclusive)

STROKE_LEVEL = 0.3  # ink weaker than this (peak = 1) is a stroke's soft edge, not what connects strokes
LINE_PIXELS = 128  # a wide picture is processed so that its height keeps at least this many pixels...
MAX_PROCESS_SIZE = 768  # ...up to this longer side
SPECK_SIZE = 0.1  # a component whose longer side is below this share of the tallest one's height is a speck
MERGE_OVERLAP = 0.5  # components sharing this share of the narrower one's columns are strokes of one digit
SMALL_GLYPH = 0.5  # a glyph lower than this share of the line's height is punctuation (a point, comma, dash)
SPLIT_WIDTH = 0.9  # a glyph wider than this share of the line's height may be two digits that touch
MIN_PIECE = 0.12  # no cut leaves a piece narrower than this share of the line's height
CUTS = 4  # ways a wide glyph is offered parted in two, at most...
SEAM_CUTS = 3  # ...of which this many along seams
CUT_DIFFERENCE = 0.05  # each moves at least this share of the strokes to the other side than any offered before
ERODE_SIZES = (3, 5, 7)  # touching strokes are parted by eroding with these square filters (px)...
ERODED_SHARE = 0.1  # ...into pieces that each keep at least this share of what is left
MAX_GLYPHS = 40  # at most this many glyphs are read in one image
SEAM_DRIFT = 0.05  # what a cut pays for each sideways step, in ink: straight where the paper is blank


@dataclass(frozen=True)
class Piece:
    """One candidate digit: the 28x28 image the classifier sees, where it lies, and whether it is
    too small beside the line's digits to be one (``small``: a point, a comma, a dash)."""

    pixels: np.ndarray
    box: Box
    small: bool


@dataclass(frozen=True)
class Alternative:
    """One way to read a glyph: its pieces, left to right."""

    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class Glyph:
    """Ink standing apart from its neighbours; ``alternatives[0]`` reads it as one piece."""

    alternatives: tuple[Alternative, ...]


@dataclass(frozen=True)
class Segmentation:
    """An image's glyphs, left to right (none for a blank image)."""

    glyphs: tuple[Glyph, ...]

    def pieces(self) -> list[Piece]:
        """Every piece of every alternative, in order: what the classifier is asked about."""
        return [piece for glyph in self.glyphs for alternative in glyph.alternatives for piece in alternative.pieces]


# --- the ink of a line of digits ----------------------------------------------------------


def _process_size(size: tuple[int, int]) -> int:
    """The longer side to find the ink at: the usual one, larger for a wide picture, so that its
    shorter side keeps LINE_PIXELS."""
    longest, shortest = max(size), max(1, min(size))
    return int(min(MAX_PROCESS_SIZE, max(PROCESS_SIZE, np.ceil(LINE_PIXELS * longest / shortest))))


def _line_ink(image: Image.Image) -> np.ndarray:
    """The picture's ink in [0, 1] with its peak at 1 (all zeros when blank), no larger than the process size."""
    size = _process_size(image.size)
    ink = ink_map(image, process_size=size).ink
    if max(ink.shape) > size:  # a canvas's alpha comes at the picture's own size
        scale = size / max(ink.shape)
        shape = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
        ink = np.asarray(Image.fromarray(ink.astype(np.float32), mode="F").resize(shape, Image.Resampling.BOX), dtype=np.float32)
    peak = float(ink.max())
    if peak <= INK_THRESHOLD:
        return np.zeros(ink.shape, np.float32)
    return np.clip(ink / peak, 0.0, 1.0).astype(np.float32)


# --- glyphs -------------------------------------------------------------------------------


@dataclass
class _Group:
    """Components read as one glyph, and their joint bounding box."""

    members: list[int]
    top: int
    bottom: int
    left: int
    right: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def absorb(self, other: "_Group") -> None:
        self.members += other.members
        self.top, self.bottom = min(self.top, other.top), max(self.bottom, other.bottom)
        self.left, self.right = min(self.left, other.left), max(self.right, other.right)


def _overlapping(first: _Group, second: _Group, small: float) -> bool:
    """Strokes of one digit: sharing MERGE_OVERLAP of the narrower one's columns, or any column when
    one of them is lower than ``small`` (a broken-off end of a stroke)."""
    overlap = min(first.right, second.right) - max(first.left, second.left)
    if min(first.height, second.height) < small:
        return overlap > 0
    return overlap >= MERGE_OVERLAP * min(first.width, second.width)


def _groups(found: Components) -> list[_Group]:
    """Components without specks, those overlapping horizontally merged, ordered left to right."""
    heights = found.bottom - found.top
    sides = np.maximum(heights, found.right - found.left)
    tallest = int(heights.max())
    small = SMALL_GLYPH * tallest
    pending = sorted(
        (
            _Group([int(i)], int(found.top[i]), int(found.bottom[i]), int(found.left[i]), int(found.right[i]))
            for i in np.flatnonzero(sides >= max(2, SPECK_SIZE * tallest))
        ),
        key=lambda g: g.left,
    )
    merged: list[_Group] = []
    for group in pending:  # by left edge: a group can only overlap groups already seen
        for other in reversed(merged):
            if _overlapping(other, group, small):
                other.absorb(group)
                break
        else:
            merged.append(group)
    # an absorbed group widens its target, which may then overlap a neighbour: merge until none does
    merging = True
    while merging:
        merging = False
        for i in range(len(merged) - 1):
            if _overlapping(merged[i], merged[i + 1], small):
                merged[i].absorb(merged.pop(i + 1))
                merging = True
                break
    return sorted(merged, key=lambda g: (g.left + g.right) / 2)


@dataclass(frozen=True)
class _Frame:
    """What framing a piece needs: the line's ink, its components, and the scale back to the upload."""

    ink: np.ndarray
    found: Components
    scale: tuple[float, float]  # upload pixels per ink pixel: x, y
    upload: tuple[int, int]
    line_height: int

    def strokes(self, group: _Group) -> np.ndarray:
        """Which pixels of the group's box are its strokes (not a neighbour's)."""
        return np.isin(self.found.labels[group.top : group.bottom, group.left : group.right], group.members)

    def piece(self, group: _Group, own: np.ndarray, side: np.ndarray | None = None) -> Piece | None:
        """The strokes ``own`` (a mask on the group's box) framed; None when empty.

        The strokes' soft edges (ink below STROKE_LEVEL) belong to the piece too: its mask
        grown by a pixel, within ``side`` (the piece's side of a cut) when given.
        """
        rows = np.flatnonzero(own.any(axis=1))
        cols = np.flatnonzero(own.any(axis=0))
        if rows.size == 0:
            return None
        grown = dilated(np.pad(own, 1))
        if side is not None:
            grown &= np.pad(side, 1, mode="edge")
        height, width = self.ink.shape
        y0, x0 = group.top - 1, group.left - 1  # the grown mask's origin on the ink
        cy0, cy1, cx0, cx1 = max(0, y0), min(height, group.bottom + 1), max(0, x0), min(width, group.right + 1)
        crop = self.ink[cy0:cy1, cx0:cx1] * grown[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        top, bottom = group.top + int(rows[0]), group.top + int(rows[-1]) + 1
        left, right = group.left + int(cols[0]), group.left + int(cols[-1]) + 1
        sx, sy = self.scale
        box = (
            max(0, int(np.floor(left * sx))),
            max(0, int(np.floor(top * sy))),
            min(self.upload[0], int(np.ceil(right * sx))),
            min(self.upload[1], int(np.ceil(bottom * sy))),
        )
        return Piece(frame_digit(crop), box, small=(bottom - top) < SMALL_GLYPH * self.line_height)


def _seams(cost: np.ndarray, margin: int) -> list[np.ndarray]:
    """Top-to-bottom paths through ``cost``, cheapest first: one ending in each column it may end in.

    A path moves at most one column per row (each sideways step costs SEAM_DRIFT) and keeps
    ``margin`` columns off either side; found by dynamic programming, row by row. Each path
    is its column on every row.
    """
    height, width = cost.shape
    if width - 2 * margin < 1:
        return []
    blocked = np.full(width, np.inf)
    blocked[margin : width - margin] = 0.0
    total = cost[0] + blocked
    moves = np.zeros((height, width), dtype=np.int8)
    columns = np.arange(width)
    for row in range(1, height):
        options = np.stack([np.concatenate(([np.inf], total[:-1])) + SEAM_DRIFT, total, np.concatenate((total[1:], [np.inf])) + SEAM_DRIFT])
        step = np.argmin(options, axis=0)
        moves[row] = step - 1
        total = options[step, columns] + cost[row] + blocked
    ends = np.arange(margin, width - margin)
    paths = np.empty((len(ends), height), dtype=np.int64)
    paths[:, -1] = ends
    for row in range(height - 1, 0, -1):
        paths[:, row - 1] = paths[:, row] + moves[row, paths[:, row]]
    return [paths[i] for i in np.argsort(total[ends], kind="stable")]


def _grown(seeds: np.ndarray, own: np.ndarray, steps: int) -> np.ndarray:
    """``seeds`` (0 = unassigned, 1 or 2) spread over the strokes ``own`` a pixel a step (8-neighbours),
    for at most ``steps`` steps: each stroke pixel reached takes the label of the seed nearest
    along the strokes (1 where both arrive at once)."""
    labels = np.where(own, seeds, 0).astype(np.uint8)
    for _ in range(steps):
        open_ = own & (labels == 0)
        first = dilated(labels == 1) & open_
        second = dilated(labels == 2) & open_ & ~first
        if not (first.any() or second.any()):
            break
        labels[first] = 1
        labels[second] = 2
    return labels


def _eroded_parts(own: np.ndarray) -> list[np.ndarray]:
    """The strokes ``own`` in two along where they touch: eroded until they fall apart into big
    pieces, and every stroke pixel given to the piece it is nearest to along the strokes.

    Two digits that touch meet at a point or a short stretch, thinner than their strokes are
    long: eroding by a pixel or two parts them there and leaves each digit's shape whole.
    Stroke pixels the pieces do not reach within a few steps (thin tails) go to the side of
    the gap between the pieces they lie on. Each result is a mask of the left piece's strokes.
    """
    image = Image.fromarray(own.astype(np.uint8) * 255, mode="L")
    for size in ERODE_SIZES:
        eroded = np.asarray(image.filter(ImageFilter.MinFilter(size))) > 0
        found = components(eroded)
        if len(found) < 2:
            continue
        masses = np.bincount(found.labels[found.labels >= 0], minlength=len(found))
        big = [int(i) for i in np.flatnonzero(masses >= ERODED_SHARE * masses.sum())]
        if len(big) < 2:
            continue
        big.sort(key=lambda i: int(found.left[i] + found.right[i]))
        parts = []
        for split in range(1, len(big)):
            seeds = np.zeros(own.shape, dtype=np.uint8)
            seeds[np.isin(found.labels, big[:split])] = 1
            seeds[np.isin(found.labels, big[split:])] = 2
            labels = _grown(seeds, own, 2 * size)
            rows, columns = np.nonzero(own & (labels == 0))
            middle = (found.right[big[split - 1]] + found.left[big[split]]) / 2
            labels[rows, columns] = np.where(columns < middle, 1, 2)
            parts.append(labels == 1)
        return parts  # the least erosion that parts the strokes: more would only thin them further
    return []


def _seam_parts(own: np.ndarray, ink: np.ndarray, margin: int) -> list[np.ndarray]:
    """The strokes ``own`` in two along each of the cheapest seams: masks of the left side's strokes."""
    columns = np.arange(own.shape[1])[None, :]
    return [own & (columns < seam[:, None]) for seam in _seams(ink, margin)]


def _height(mask: np.ndarray) -> int:
    rows = np.flatnonzero(mask.any(axis=1))
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def _cuts(own: np.ndarray, ink: np.ndarray, margin: int, small: float) -> list[np.ndarray]:
    """Ways to part the strokes ``own`` in two (each a mask of one part): up to SEAM_CUTS along the
    cheapest seams, then where the strokes touch (``_eroded_parts``), CUTS in all. Each moves at
    least CUT_DIFFERENCE of the strokes to the other side than any before it, and leaves both
    sides at least that much and at least ``small`` rows tall: a cut leaving a piece too small to
    be a digit never reads better than the glyph whole (``best_alternative``)."""
    strokes = int(own.sum())
    least = CUT_DIFFERENCE * strokes
    chosen: list[np.ndarray] = []

    def offer(parts: list[np.ndarray], limit: int) -> None:
        for part in parts:
            if len(chosen) >= limit:
                return
            size = int(part.sum())
            if min(size, strokes - size) < least or min(_height(part), _height(own & ~part)) < small:
                continue
            moved = [int((part ^ other).sum()) for other in chosen]
            if all(min(m, strokes - m) >= least for m in moved):
                chosen.append(part)

    offer(_seam_parts(own, ink, margin), SEAM_CUTS)
    offer(_eroded_parts(own), CUTS)
    return chosen


def _alternatives(frame: _Frame, group: _Group) -> list[Alternative]:
    """The group whole, and when wide, also parted in two in each of up to CUTS ways (``_cuts``)."""
    own = frame.strokes(group)
    whole = frame.piece(group, own)
    if whole is None:
        return []
    alternatives = [Alternative((whole,))]
    if whole.small or group.width <= SPLIT_WIDTH * frame.line_height:
        return alternatives
    ink = frame.ink[group.top : group.bottom, group.left : group.right] * own
    margin = max(1, int(np.ceil(MIN_PIECE * frame.line_height)))
    for part in _cuts(own, ink, margin, SMALL_GLYPH * frame.line_height):
        rest = own & ~part
        sides = [frame.piece(group, part, ~rest), frame.piece(group, rest, ~part)]
        pieces = tuple(sorted((p for p in sides if p is not None), key=lambda p: p.box[0] + p.box[2]))
        if len(pieces) == 2:
            alternatives.append(Alternative(pieces))
    return alternatives


def segment(image: Image.Image, upload_size: tuple[int, int] | None = None) -> Segmentation:
    """The glyphs of a decoded picture, left to right; boxes in pixels of ``upload_size`` (default: the picture's)."""
    ink = _line_ink(image)
    strokes = ink > STROKE_LEVEL
    if not strokes.any():
        return Segmentation(())
    found = components(strokes)
    upload = upload_size or image.size
    groups = _groups(found)
    if len(groups) > MAX_GLYPHS:  # no written number: its tallest marks are read, so that the work stays bounded
        groups = sorted(sorted(groups, key=lambda g: -g.height)[:MAX_GLYPHS], key=lambda g: (g.left + g.right) / 2)
    line_height = max(g.height for g in groups)
    frame = _Frame(ink, found, (upload[0] / ink.shape[1], upload[1] / ink.shape[0]), upload, line_height)
    glyphs = []
    for group in groups:
        alternatives = _alternatives(frame, group)
        if alternatives:
            glyphs.append(Glyph(tuple(alternatives)))
    return Segmentation(tuple(glyphs))


# --- choosing between readings ------------------------------------------------------------

SCORE_FLOOR = 1e-4  # a piece's score counts as at least this: one hopeless piece does not end the comparison


def best_alternative(glyph: Glyph, scores: Sequence[float]) -> int:
    """The alternative whose pieces the classifier is most sure of, all together.

    ``scores``: one per piece of ``glyph``'s alternatives in order, each in [0, 1] (how sure
    the classifier is that the piece is the digit it read). An alternative's worth is the
    product of its pieces' scores (a small piece counts as SCORE_FLOOR): every extra piece
    multiplies by a number at most 1, so a glyph is read as two digits only when both halves
    are clearly digits and the whole is clearly not one.
    """
    best, best_worth, offset = 0, -np.inf, 0
    for index, alternative in enumerate(glyph.alternatives):
        count = len(alternative.pieces)
        worth = sum(
            float(np.log(max(SCORE_FLOOR, SCORE_FLOOR if piece.small and count > 1 else score)))
            for piece, score in zip(alternative.pieces, scores[offset : offset + count], strict=True)
        )
        if worth > best_worth:
            best, best_worth = index, worth
        offset += count
    return best
