"""The committed checkpoints (``*.pt``) and their metadata (``*.json``), shipped as package data.

``DIRECTORY`` is where they lie: beside this file in a checkout and in an installed wheel
alike, so ``python -m service`` serves them from any working directory.
"""

from pathlib import Path

__all__ = ["DIRECTORY"]

DIRECTORY = Path(__file__).resolve().parent
