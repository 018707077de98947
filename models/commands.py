"""The console scripts ``digits-train`` and ``digits-evaluate``.

Training and evaluation need the ``train`` extra (torchvision, tqdm, matplotlib), which a
serving install leaves out; without it these say so and exit instead of raising ImportError.
"""

import importlib
import importlib.util
import sys

__all__ = ["evaluate", "train"]

TRAIN_EXTRA = ("torchvision", "tqdm", "matplotlib")


def _run(module: str, command: str) -> int:
    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"{command} needs the train extra ({', '.join(missing)} missing): pip install 'digits-serving[train]'",
            file=sys.stderr,
        )
        return 2
    result: int = importlib.import_module(module).main()
    return result


def train() -> int:
    return _run("models.train", "digits-train")


def evaluate() -> int:
    return _run("models.evaluate", "digits-evaluate")
