"""The training recipe: every choice that shapes the weights, each declared once.

A ``Recipe`` is the architecture and eight sections, each a frozen dataclass whose fields are
declared with ``hyperparameter(default, help)``. That declaration is the field, its default,
its command-line flag (``add_recipe_flags``: name, type and help generated from the field) and
its key under ``recipe`` in the checkpoint's metadata (``dataclasses.asdict``; ``Recipe.from_json``
reads it back). A flag is ``--FIELD`` or, for the sections declared with a prefix, ``--PREFIX-FIELD``
(``--outlier-weight``, ``--init-sha256``, ``--selection-rule``).
"""

import argparse
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from models.augment import Degradations
from models.data import Distortion
from models.nondigits import TRAIN_SEED
from models.registry import ARCHITECTURES
from models.training.hyperparameter import HELP, hyperparameter

__all__ = [
    "DEFAULT_RECIPES",
    "Data",
    "Init",
    "Optimisation",
    "OutlierExposure",
    "Recipe",
    "Schedule",
    "Selection",
    "add_recipe_flags",
    "recipe_flags_given",
    "recipe_from_flags",
]

FLAG_PREFIX = "flag_prefix"  # metadata of a section field: its flags are --PREFIX-FIELD
NON_DIGITS = 5000  # per pool: validation (seed VALIDATION_SEED) and evaluation (seed EVALUATION_SEED)
SMOKE_NON_DIGITS = 500  # the same pools, cut short, for runs on a --train-limit subset


@dataclass(frozen=True)
class Data:
    """The training digits: which MNIST images are held out for validation, how many are trained on,
    and the share of each batch synthesised from pen strokes (an epoch is still one pass over MNIST)."""

    split_seed: int = hyperparameter(2024, "seed of the split: which training images are validation")
    val_size: int = hyperparameter(5000, "training images held out for validation")
    train_limit: int | None = hyperparameter(None, "train on the first N images only (smoke runs)")
    strokes_fraction: float = hyperparameter(
        0.0, "share of each batch's digits drawn by the stroke synthesiser (models.strokes) instead of MNIST, in [0, 1)"
    )
    strokes_degraded: bool = hyperparameter(False, "pass the synthesised digits through the recipe's degradations too")

    def strokes_per_batch(self, batch_size: int) -> int:
        """Synthesised digits per batch of ``batch_size`` digits; the rest are MNIST's, at least one."""
        if self.strokes_fraction < 0.0:
            raise ValueError(f"strokes_fraction {self.strokes_fraction:g} is a share of the batch: 0 or more")
        count = round(batch_size * self.strokes_fraction)
        if count >= batch_size:
            raise ValueError(f"strokes_fraction {self.strokes_fraction:g} leaves no MNIST images in a batch of {batch_size}")
        return count

    @property
    def non_digits(self) -> int:
        """Images per non-digit pool: smoke runs (a --train-limit subset) measure on fewer."""
        return SMOKE_NON_DIGITS if self.train_limit else NON_DIGITS

    @property
    def drawn_validation_digits(self) -> int:
        """Synthesised digits (models.strokes, seed VALIDATION_SEED) that validation measures and is_digit must pass."""
        return self.non_digits // 2


@dataclass(frozen=True)
class Schedule:
    """Epochs and the one-cycle learning rate: a rise to the peak, then cosine annealing."""

    epochs: int = hyperparameter(50, "training epochs")
    lr: float = hyperparameter(3e-3, "peak learning rate")
    pct_start: float = hyperparameter(0.25, "share of the steps spent rising to the peak")
    clean_epochs: int = hyperparameter(0, "train the last N epochs on the images as they are (no augmentation)")


@dataclass(frozen=True)
class Optimisation:
    """AdamW on cross-entropy; every epoch is measured (and kept) as an exponential moving average."""

    batch_size: int = hyperparameter(128, "images per batch")
    weight_decay: float = hyperparameter(5e-2, "AdamW's decoupled weight decay")
    label_smoothing: float = hyperparameter(0.1, "label smoothing of the cross-entropy")
    grad_clip: float | None = hyperparameter(None, "clip the gradient norm to this value (none: no clipping)")
    ema_decay: float = hyperparameter(0.999, "decay of the moving average of the weights, per step")
    seed: int = hyperparameter(0, "seed of the initialisation, the shuffling and the augmentation")


@dataclass(frozen=True)
class OutlierExposure:
    """Synthetic non-digits (models.nondigits) in every batch, trained towards a uniform output."""

    fraction: float = hyperparameter(0.0, "non-digits per batch, as a share of the batch size")
    weight: float = hyperparameter(0.0, "weight of the uniform-target loss on the non-digits (0: off)")
    seed: int = hyperparameter(TRAIN_SEED, "epoch e's non-digits are drawn with seed SEED + e")

    def per_batch(self, batch_size: int) -> int:
        return round(batch_size * self.fraction) if self.weight > 0 else 0


@dataclass(frozen=True)
class Init:
    """Where the weights start: a fresh initialisation, or the checkpoint with this sha256 (--init FILE)."""

    sha256: str | None = hyperparameter(None, "sha256 of the state_dict to fine-tune from; --init FILE must have it (none: from scratch)")
    logit_scale: float = hyperparameter(1.0, "multiply the last layer of the --init checkpoint (its logits) by this")


@dataclass(frozen=True)
class Selection:
    """Which epoch's weights are kept, judged on the validation split only."""

    rule: Literal["val_accuracy", "mixed"] = hyperparameter(
        "val_accuracy",
        "val_accuracy: the best clean validation accuracy; mixed: the best mean of the clean and the degraded "
        "validation accuracy among the epochs whose clean accuracy reaches --selection-min-val-accuracy "
        "(ties: the lower validation loss)",
    )
    min_val_accuracy: float = hyperparameter(0.0, "mixed: the clean validation accuracy an epoch needs")


@dataclass(frozen=True)
class Recipe:
    """Every choice that shapes the weights of one network; recorded whole in its metadata."""

    arch: str
    data: Data = dataclasses.field(default=Data())
    schedule: Schedule = dataclasses.field(default=Schedule())
    optimisation: Optimisation = dataclasses.field(default=Optimisation())
    augmentation: Distortion = dataclasses.field(default=Distortion())
    degradations: Degradations = dataclasses.field(default=Degradations())
    outliers: OutlierExposure = dataclasses.field(default=OutlierExposure(), metadata={FLAG_PREFIX: "outlier"})
    init: Init = dataclasses.field(default=Init(), metadata={FLAG_PREFIX: "init"})
    selection: Selection = dataclasses.field(default=Selection(), metadata={FLAG_PREFIX: "selection"})

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {sorted(ARCHITECTURES)}")
        if self.init.sha256 is None and self.init.logit_scale != 1.0:
            raise ValueError("init logit_scale scales a checkpoint to fine-tune from, but the recipe has no init sha256")

    @classmethod
    def from_json(cls, recorded: Mapping[str, Any]) -> "Recipe":
        """The recipe as ``dataclasses.asdict`` wrote it into a checkpoint's metadata (lists for tuples)."""
        try:
            sections = {
                name: kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded[name].items()})
                for name, kind in _sections().items()
            }
            return cls(recorded["arch"], **sections)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a recorded recipe ({type(exc).__name__}: {exc}): {dict(recorded)}") from None


# The recipe each committed checkpoint was trained with. Chosen per architecture on
# validation accuracy: strong augmentation and label smoothing lifted the residual net,
# but held back the Inception net, whose InceptionA blocks have no non-linearity inside;
# it does best with mild augmentation and a last few epochs on the images as they are.
DEFAULT_RECIPES = {
    "inception": Recipe(
        "inception",
        schedule=Schedule(epochs=60, clean_epochs=8),
        optimisation=Optimisation(weight_decay=1e-3, label_smoothing=0.0, grad_clip=5.0, seed=2),
        augmentation=Distortion(degrees=8.0, scale=(0.92, 1.08), shear=0.0, elastic_p=0.0),
    ),
    # From a fresh initialisation: MNIST with the degradations of models.augment, the stroke
    # synthesiser's digits in every style (models.strokes), and outlier exposure, from the first
    # epoch; the distortion drawn per image but applied per batch (it was most of the CPU time).
    # The epoch is chosen by the "mixed" rule, which includes the synthesised styles.
    "resnet": Recipe(
        "resnet",
        data=Data(strokes_fraction=0.0625),
        schedule=Schedule(epochs=60),
        augmentation=Distortion(mode="batched"),
        degradations=Degradations(stroke_p=0.2, lowres_p=0.2, binarise_p=0.15, contrast_p=0.2, noise_p=0.15, thumbnail_p=0.35),
        outliers=OutlierExposure(fraction=0.125, weight=0.5),
        selection=Selection(rule="mixed", min_val_accuracy=0.996),
    ),
}


@dataclass(frozen=True)
class _Flag:
    """The command-line flag of one hyperparameter: ``--[PREFIX-]FIELD`` for ``Recipe.<section>.<field>``."""

    section: str
    field: str
    option: str
    annotation: Any
    help: str

    @property
    def dest(self) -> str:
        return f"{self.section}.{self.field}"


def _sections() -> dict[str, type[Any]]:
    """Each section's name and dataclass, in the order of the recipe."""
    hints = typing.get_type_hints(Recipe)
    return {field.name: hints[field.name] for field in dataclasses.fields(Recipe) if field.name != "arch"}


def _flags() -> list[_Flag]:
    prefixes = {field.name: field.metadata.get(FLAG_PREFIX) for field in dataclasses.fields(Recipe)}
    flags = []
    for section, kind in _sections().items():
        hints = typing.get_type_hints(kind)
        for field in dataclasses.fields(kind):
            option = "--" + "-".join(filter(None, [prefixes[section], field.name])).replace("_", "-")
            flags.append(_Flag(section, field.name, option, hints[field.name], field.metadata[HELP]))
    return flags


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(map(_shown, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_or_none


def _argument_options(kind: Any) -> dict[str, Any]:
    """add_argument's type and metavar, nargs or choices for a field's annotation."""
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    if typing.get_origin(kind) is tuple:
        (item, *rest) = typing.get_args(kind)
        if any(other is not item for other in rest) or item not in (int, float):
            raise TypeError(f"a tuple flag needs numbers of one type, not {kind}")
        return {"type": item, "nargs": len(rest) + 1, "metavar": item.__name__.upper()}
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        (inner,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        return _argument_options(inner) | {"type": _optional(inner), "metavar": f"{inner.__name__.upper()}|none"}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if kind in (int, float, str):
        return {"type": kind, "metavar": kind.__name__.upper()}
    raise TypeError(f"no flag for a field of type {kind}")


def add_recipe_flags(parser: argparse.ArgumentParser, recipes: Mapping[str, Recipe] = DEFAULT_RECIPES) -> None:
    """One flag per hyperparameter, grouped by section; each help line ends with the defaults of ``recipes``."""
    groups = {
        section: parser.add_argument_group(f"recipe: {section}", textwrap.fill(inspect.cleandoc(kind.__doc__ or "").split("\n\n")[0], 88))
        for section, kind in _sections().items()
    }
    for flag in _flags():
        defaults = {arch: _shown(getattr(getattr(recipe, flag.section), flag.field)) for arch, recipe in recipes.items()}
        shown = next(iter(defaults.values())) if len(set(defaults.values())) == 1 else ", ".join(f"{a} {v}" for a, v in defaults.items())
        groups[flag.section].add_argument(
            flag.option,
            dest=flag.dest,
            default=argparse.SUPPRESS,  # absent from the namespace unless given: the recipe's value stays
            help=f"{flag.help} [default: {shown}]".replace("%", "%%"),
            **_argument_options(flag.annotation),
        )


def recipe_flags_given(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The recipe flags on the command line, as {section: {field: value}}."""
    given: dict[str, dict[str, Any]] = {}
    for flag in _flags():
        if hasattr(args, flag.dest):
            value = getattr(args, flag.dest)
            given.setdefault(flag.section, {})[flag.field] = tuple(value) if isinstance(value, list) else value
    return given


def recipe_from_flags(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """``recipe`` with the hyperparameters given on the command line replaced."""
    changed = {name: dataclasses.replace(getattr(recipe, name), **values) for name, values in recipe_flags_given(args).items()}
    return dataclasses.replace(recipe, **changed)
