"""The ``digits`` command line: ``digits predict FILES|DIRS``, ``digits read FILES|DIRS`` and ``digits info``.

    digits predict digit.png scans/ --model resnet
    digits read cheque.jpg postcodes/ --json
    digits info --json

Exit status: 0 when everything was predicted or read, 1 on an error (its message on stderr, the
server's own for HTTP errors), 2 on bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from digits_client._version import __version__
from digits_client.client import DEFAULT_URL, Client
from digits_client.errors import DigitsError, DigitsInputError
from digits_client.images import IMAGE_SUFFIXES
from digits_client.models import Prediction, Reading

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``digits`` command; returns the exit status (0 ok, 1 an error, 2 bad usage)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: return their status instead of exiting
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return {"predict": _predict, "read": _read, "info": _info}[args.command](args)
    except DigitsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("DIGITS_URL", DEFAULT_URL), help="server URL (default: $DIGITS_URL or %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("DIGITS_API_KEY"), help="sent as X-API-Key (default: $DIGITS_API_KEY)")
    common.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(prog="digits", description="Client for the handwritten digit recogniser.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser("predict", parents=[common], help="classify image files and directories of images")
    predict.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_DIR", help="an image file, or a directory of images (png, jpg, bmp, gif, webp, tiff)"
    )
    predict.add_argument("--model", help="served model name (default: the server's default)")
    predict.add_argument("--batch-size", type=_positive_int, default=64, help="images per request (default: %(default)s)")
    read = commands.add_parser("read", parents=[common], help="read the number written on each image (several digits)")
    read.add_argument(
        "inputs", nargs="+", metavar="FILE_OR_DIR", help="an image file, or a directory of images (png, jpg, bmp, gif, webp, tiff)"
    )
    read.add_argument("--model", help="served model name (default: the server's default)")
    read.add_argument("--batch-size", type=_positive_int, default=16, help="images per request (default: %(default)s)")
    commands.add_parser("info", parents=[common], help="show the served models")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


# digits predict ------------------------------------------------------------------------


Answer = TypeVar("Answer")


def _in_batches(
    args: argparse.Namespace, ask: Callable[[Client, list[Path]], tuple[str, list[Answer]]]
) -> tuple[str, list[tuple[Path, Answer]]]:
    """The image files of ``args.inputs`` sent in batches of ``args.batch_size``: the model that
    answered, and each file with its answer; a progress bar on stderr for long runs."""
    files, any_directory = _image_files(args.inputs)
    results: list[tuple[Path, Answer]] = []
    model = ""
    progress = _progress(len(files), sys.stderr, wanted=any_directory or len(files) > args.batch_size)
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client, progress as advance:
        for start in range(0, len(files), args.batch_size):
            batch = files[start : start + args.batch_size]
            model, answers = ask(client, batch)
            results.extend(zip(batch, answers, strict=True))
            advance(len(batch))
    return model, results


def _predict(args: argparse.Namespace) -> int:
    def ask(client: Client, batch: list[Path]) -> tuple[str, list[Prediction]]:
        response = client.predict(batch, model=args.model)
        return response.model, response.predictions

    model, results = _in_batches(args, ask)
    if args.json:
        print(json.dumps({"model": model, "predictions": [_prediction_json(path, p) for path, p in results]}, indent=2))
        return 0
    # Servers that judge whether an image is a digit at all say so; older ones leave is_digit out.
    judged = any(p.is_digit is not None for _, p in results)
    headers = ("file", "digit", "confidence", *(("digit?",) if judged else ()))
    rows = [(str(path), str(p.label), f"{100 * p.confidence:.1f}%", *((_yes_no(p.is_digit),) if judged else ())) for path, p in results]
    print(_table(headers, rows, right=frozenset({1, 2})))
    return 0


def _image_files(arguments: Sequence[str]) -> tuple[list[Path], bool]:
    """Files as given, and each directory's images (by suffix, sorted by name, not recursive).

    Also says whether a directory was named, which is when a progress line is worth showing.
    """
    files: list[Path] = []
    any_directory = False
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            any_directory = True
            found = sorted((p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name)
            if not found:
                print(f"warning: no images in {argument} ({', '.join(sorted(IMAGE_SUFFIXES))})", file=sys.stderr)
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DigitsInputError(f"no such file or directory: {argument}")
    if not files:
        raise DigitsInputError("no images to predict")
    return files, any_directory


def _prediction_json(path: Path, prediction: Prediction) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "file": str(path),
        "label": prediction.label,
        "confidence": prediction.confidence,
        "probabilities": prediction.probabilities,
    }
    if prediction.is_digit is not None:
        entry["is_digit"] = prediction.is_digit
    if prediction.digit_score is not None:
        entry["digit_score"] = prediction.digit_score
    return entry


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


@contextlib.contextmanager
def _progress(total: int, stream: TextIO, *, wanted: bool) -> Iterator[Callable[[int], None]]:
    """A progress line (``predicted 128/500 images (25%)``) rewritten in place on ``stream``, when wanted and a terminal."""
    if not (wanted and stream.isatty()):
        yield lambda _: None
        return
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        stream.write(f"\rpredicted {done}/{total} images ({100 * done // total}%)")
        stream.flush()

    try:
        yield advance
    finally:
        stream.write("\r\033[K")  # clear the line: the table or JSON follows on stdout
        stream.flush()


# digits read ---------------------------------------------------------------------------


def _read(args: argparse.Namespace) -> int:
    def ask(client: Client, batch: list[Path]) -> tuple[str, list[Reading]]:
        response = client.read(batch, model=args.model)
        return response.model, response.readings

    model, results = _in_batches(args, ask)
    if args.json:
        readings = [{"file": str(path), **reading.model_dump(mode="json")} for path, reading in results]
        print(json.dumps({"model": model, "readings": readings}, indent=2))
        return 0
    rows = [(str(path), reading.text or "-", f"{100 * reading.confidence:.1f}%", _pieces(reading)) for path, reading in results]
    print(_table(("file", "number", "confidence", "digits"), rows, right=frozenset({2})))
    return 0


def _pieces(reading: Reading) -> str:
    """Each piece as its label and confidence; pieces that are no digit in brackets."""
    shown = [f"{d.label} {100 * d.confidence:.0f}%" if d.is_digit else f"[{d.label}?]" for d in reading.digits]
    return ", ".join(shown) or "no ink"


# digits info ---------------------------------------------------------------------------


def _info(args: argparse.Namespace) -> int:
    with Client(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        info = client.model_info()
    if args.json:
        print(info.model_dump_json(indent=2, exclude_unset=True))  # what the server said: unset fields left out, unknown ones kept
        return 0
    rows = []
    for m in info.models:
        accuracy = m.metrics.get("test_accuracy")
        rows.append(
            (
                m.name + (" *" if m.name == info.default_model else ""),
                m.architecture.split(":")[0].strip(),
                f"{m.parameters:,}",
                f"{100 * accuracy:.2f}%" if isinstance(accuracy, int | float) else "-",
                m.device,
                (m.weights.sha256 or "-")[:12],
            )
        )
    print(_table(("name", "architecture", "parameters", "test accuracy", "device", "sha256"), rows, right=frozenset({2, 3})))
    print(f"* default model; service {info.service_version or '?'}, torch {info.torch_version or '?'}")
    return 0


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: frozenset[int] = frozenset()) -> str:
    """Plain aligned columns; ``right`` holds the indices of numeric columns."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )
