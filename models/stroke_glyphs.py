"""The pen trajectories of the stroke synthesiser: each way of writing each digit, as control points.

A glyph is drawn in a box of height 1 (y grows downwards, x from the left edge, most
glyphs about 0.6 wide). A stroke is what the pen draws without lifting: control points of
centripetal Catmull-Rom curves, in the order the pen passes them. A point marked ``CORNER``
ends one smooth piece and starts the next (the 7's top right, the apex of a flagged 1);
elsewhere the curve passes the points smoothly. ``models.strokes`` jitters the points,
fits the curves, distorts and renders them.

``european`` marks the styles that are rare in MNIST (American clerks and students) and
common elsewhere: the 1 with a long up-stroke (flag), with or without a foot; the crossed
7; the 4 with an open top; the 9 whose tail curves back to the left.
"""

from dataclasses import dataclass, field

__all__ = ["CORNER", "VARIANTS", "Point", "Stroke", "Variant"]

CORNER = True

Point = tuple[float, float] | tuple[float, float, bool]  # (x, y) passed smoothly, (x, y, CORNER) a corner
Stroke = tuple[Point, ...]


@dataclass(frozen=True)
class Variant:
    """One way of writing ``label``: its strokes, and strokes added with a probability (a serif, a tick)."""

    name: str
    label: int
    strokes: tuple[Stroke, ...]
    european: bool = False
    optional: tuple[tuple[float, Stroke], ...] = field(default=())


_ZERO_LEFT = ((0.16, 0.13), (0.04, 0.46), (0.13, 0.85), (0.36, 0.99))
_ZERO_CLOSED: Stroke = ((0.4, 0.03), *_ZERO_LEFT, (0.58, 0.86), (0.68, 0.5), (0.6, 0.14), (0.4, 0.02), (0.28, 0.07))
_ZERO_OPEN: Stroke = ((0.44, 0.05), *_ZERO_LEFT, (0.58, 0.85), (0.68, 0.52), (0.64, 0.32))
_ONE_PLAIN: Stroke = ((0.3, 0.0), (0.29, 0.5), (0.27, 1.0))
_ONE_FLAG: Stroke = ((0.02, 0.44), (0.36, 0.0, CORNER), (0.35, 0.5), (0.33, 1.0))
_ONE_FOOT: Stroke = ((0.1, 1.0), (0.58, 0.99))
_TWO_TOP = ((0.06, 0.24), (0.18, 0.06), (0.36, 0.0), (0.54, 0.12), (0.54, 0.32), (0.36, 0.56))
_TWO_PLAIN: Stroke = (*_TWO_TOP, (0.04, 0.97, CORNER), (0.34, 0.95), (0.64, 0.97))
_TWO_Z_TOP = ((0.04, 0.18), (0.2, 0.04), (0.46, 0.02), (0.6, 0.14), (0.5, 0.34))
_TWO_Z: Stroke = (*_TWO_Z_TOP, (0.03, 0.95, CORNER), (0.4, 0.94), (0.78, 0.97))
_TWO_CURL = ((0.14, 0.78), (0.03, 0.92), (0.1, 1.0), (0.28, 0.97), (0.38, 0.84), (0.31, 0.72), (0.19, 0.75), (0.17, 0.88), (0.27, 0.97))
_TWO_LOOP: Stroke = (*_TWO_TOP, *_TWO_CURL, (0.44, 0.98), (0.66, 0.96))
_THREE_BOTTOM = ((0.5, 0.56), (0.58, 0.78), (0.42, 0.97), (0.18, 0.98), (0.03, 0.86))
_THREE_ROUND: Stroke = ((0.06, 0.14), (0.26, 0.01), (0.48, 0.08), (0.5, 0.28), (0.26, 0.46, CORNER), *_THREE_BOTTOM)
_THREE_FLAT: Stroke = ((0.06, 0.03), (0.56, 0.02, CORNER), (0.24, 0.42, CORNER), *_THREE_BOTTOM)
_FOUR_CLOSED: tuple[Stroke, ...] = (((0.44, 0.0), (0.02, 0.64, CORNER), (0.66, 0.63)), ((0.46, 0.0), (0.46, 0.5), (0.45, 1.0)))
_FOUR_OPEN: tuple[Stroke, ...] = (((0.14, 0.0), (0.05, 0.6, CORNER), (0.66, 0.6)), ((0.48, 0.1), (0.47, 0.6), (0.46, 1.0)))
_FIVE_BODY = ((0.14, 0.02), (0.1, 0.44, CORNER), (0.3, 0.36), (0.52, 0.46), (0.58, 0.7), (0.44, 0.94), (0.22, 0.99), (0.04, 0.88))
_FIVE_ROUND = ((0.16, 0.02), (0.1, 0.42), (0.3, 0.36), (0.52, 0.46), (0.58, 0.7), (0.44, 0.94), (0.22, 0.99), (0.04, 0.88))
_FIVE_BAR: Stroke = ((0.14, 0.02), (0.6, 0.0))
_SIX_BODY = ((0.52, 0.03), (0.28, 0.16), (0.1, 0.48), (0.12, 0.84), (0.32, 0.99), (0.52, 0.86), (0.54, 0.64))
_SEVEN: Stroke = ((0.04, 0.04), (0.62, 0.02, CORNER), (0.42, 0.4), (0.26, 1.0))
_SEVEN_BAR: Stroke = ((0.2, 0.53), (0.62, 0.5))
_SEVEN_TICK: Stroke = ((0.02, 0.17), (0.04, 0.04))
_EIGHT_TOP = ((0.48, 0.1), (0.32, 0.01), (0.14, 0.09), (0.16, 0.28), (0.34, 0.44))
_EIGHT_BODY = (*_EIGHT_TOP, (0.58, 0.66), (0.52, 0.93), (0.28, 0.99), (0.04, 0.86), (0.1, 0.64), (0.32, 0.46))
_NINE_LOOP = ((0.54, 0.14), (0.34, 0.01), (0.1, 0.1), (0.08, 0.34), (0.3, 0.45), (0.52, 0.34), (0.56, 0.1, CORNER))

VARIANTS: tuple[Variant, ...] = (
    Variant("0 closed", 0, (_ZERO_CLOSED,)),
    Variant("0 open", 0, (_ZERO_OPEN,)),
    Variant("1 plain", 1, (_ONE_PLAIN,)),
    Variant("1 flag", 1, (_ONE_FLAG,), european=True),
    Variant("1 flag and foot", 1, (_ONE_FLAG, _ONE_FOOT), european=True),
    Variant("2 plain", 2, (_TWO_PLAIN,)),
    Variant("2 loop", 2, (_TWO_LOOP,)),
    Variant("2 z-shaped", 2, (_TWO_Z,)),
    Variant("3 round top", 3, (_THREE_ROUND,)),
    Variant("3 flat top", 3, (_THREE_FLAT,)),
    Variant("4 closed top", 4, _FOUR_CLOSED),
    Variant("4 open top", 4, _FOUR_OPEN, european=True),
    Variant("5 two strokes", 5, (_FIVE_BODY, _FIVE_BAR)),
    Variant("5 rounded", 5, (_FIVE_ROUND, _FIVE_BAR)),
    Variant("5 one stroke", 5, (((0.6, 0.0), (*_FIVE_BODY[0], CORNER), *_FIVE_BODY[1:]),)),
    Variant("6 closed", 6, ((*_SIX_BODY, (0.36, 0.52), (0.16, 0.6), (0.1, 0.72)),)),
    Variant("6 open", 6, ((*_SIX_BODY, (0.4, 0.53), (0.27, 0.57)),)),
    Variant("7 plain", 7, (_SEVEN,)),
    Variant("7 crossed", 7, (_SEVEN, _SEVEN_BAR), european=True, optional=((0.4, _SEVEN_TICK),)),
    Variant("8 closed", 8, ((*_EIGHT_BODY, (0.46, 0.3), (0.5, 0.12)),)),
    Variant("8 open", 8, ((*_EIGHT_BODY, (0.44, 0.38)),)),
    Variant("9 straight tail", 9, ((*_NINE_LOOP, (0.54, 0.55), (0.5, 1.0)),)),
    Variant("9 curved tail", 9, ((*_NINE_LOOP, (0.56, 0.5), (0.5, 0.8), (0.34, 0.97), (0.14, 0.96), (0.04, 0.86)),), european=True),
)
