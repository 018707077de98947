"""Offline training: one architecture per run, its epoch chosen on the validation split.

    python -m models.train --arch resnet --data-dir ../shared/data --no-download --threads 1 --workers 2
    python -m models.train --arch inception --data-dir ../shared/data --no-download --threads 1

With no recipe flags a run trains the architecture's default recipe, the one its committed
checkpoint was trained with; each recipe flag below replaces one hyperparameter of it. Writes
<out>/<arch>.pt (a state_dict for torch.load(weights_only=True)), <out>/<arch>.json (metrics,
calibration, the is_digit rule, the whole recipe) and two plots, and prints validation figures
only. When the other architecture's checkpoint is already in <out>, the ensemble of the two
is calibrated on the same validation split and written as <out>/ensemble.json; --arch ensemble
does only that step.

The epoch, every temperature and every is_digit threshold are chosen on the 5,000 validation
images held out of the 60k training images (and on synthetic non-digits); the 10k test set is
measured only for the checkpoint written, into its metadata.

Both committed recipes train from a fresh initialisation. A recipe that fine-tunes names its
starting checkpoint by sha256 (--init-sha256): --init FILE must be that file. At a given
--threads and --workers a run is reproducible bit for bit.
"""

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import weights_path
from models.data import load_mnist, split_validation
from models.registry import ARCHITECTURES, ENSEMBLE
from models.training.loop import fit, load_init
from models.training.recipe import DEFAULT_RECIPES, Recipe, add_recipe_flags, recipe_flags_given, recipe_from_flags
from models.training.report import calibrate_ensemble, refit_is_digit, write_checkpoint

__all__ = ["build_parser", "main", "train"]


def train(
    recipe: Recipe, data_dir: Path, download: bool, out: Path, workers: int, init: Path | None = None, command: str | None = None
) -> dict[str, Any]:
    """Fit ``recipe``, then calibrate, measure and write the checkpoint; returns its metadata."""
    started = time.perf_counter()
    init_state = load_init(recipe.init, init)
    data = recipe.data
    full_train, val = split_validation(load_mnist(data_dir, train=True, download=download), data.val_size, data.split_seed)
    train_digits = full_train.subset(torch.arange(data.train_limit)) if data.train_limit else full_train
    fitted = fit(recipe, train_digits, val, workers, init_state)
    test = load_mnist(data_dir, train=False, download=download)
    metadata = write_checkpoint(out, recipe, fitted, len(train_digits), val, test, started, command)
    if all(weights_path(out, name).exists() for name in ARCHITECTURES):
        calibrate_ensemble(out, data_dir, download)
    return metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.train",
        usage="%(prog)s --arch {inception,resnet,ensemble} [options] [recipe flags]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--arch",
        choices=[*ARCHITECTURES, ENSEMBLE],
        required=True,
        help="the network to train; ensemble: only (re)calibrate the ensemble of the checkpoints in --out",
    )
    parser.add_argument("--init", type=Path, metavar="FILE", help="the state_dict to fine-tune from; its sha256 must be the recipe's")
    parser.add_argument("--fit-is-digit", action="store_true", help="only refit the is_digit block of <out>/<arch>.json")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), metavar="DIR", help="MNIST in torchvision's layout [default: data]")
    parser.add_argument("--no-download", dest="download", action="store_false", help="read a local copy only")
    parser.add_argument(
        "--out", type=Path, default=Path("weights"), metavar="DIR", help="where the checkpoint is written [default: weights]"
    )
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="DataLoader worker processes for augmentation [default: 1]")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch intra-op threads [default: all cores]")
    add_recipe_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    cli = build_parser()
    args = cli.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_is_digit or args.arch == ENSEMBLE:
        if recipe_flags_given(args) or args.init is not None:
            cli.error("recipe flags and --init apply to training one architecture only")
        if args.fit_is_digit:
            refit_is_digit(args.out, args.arch, args.data_dir, args.download)
        else:
            calibrate_ensemble(args.out, args.data_dir, args.download)
        return 0
    try:
        recipe = recipe_from_flags(DEFAULT_RECIPES[args.arch], args)
    except ValueError as exc:
        cli.error(str(exc))
    command = shlex.join(["python", "-m", "models.train", *(sys.argv[1:] if argv is None else argv)])
    train(recipe, args.data_dir, args.download, args.out, args.workers, args.init, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
