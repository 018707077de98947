"""The one declaration of a recipe hyperparameter: a dataclass field with a default and a help line.

``models.training.recipe`` turns every such field into a command-line flag (name, type,
help) and records it in the checkpoint's metadata, so a hyperparameter is declared once,
in the section it belongs to, and nowhere else.
"""

import dataclasses
from typing import TypeVar

__all__ = ["HELP", "hyperparameter"]

HELP = "help"

T = TypeVar("T")


def hyperparameter(default: T, help: str) -> T:
    """A field of a recipe section; ``help`` is the help line of its flag."""
    return dataclasses.field(default=default, metadata={HELP: help})
