"""What reading a number costs: one ``/read`` of a 6-digit photo against one ``/predict`` of a one-digit photo.

    python -m bench.read                      # starts `python -m service` (one worker) itself
    python -m bench.read --url http://host:8000 --rounds 7 --requests 40

Both photos are MNIST *test* digits on paper, as a phone shoots them (JPEG, ``evaluation``'s
renderers): the number a row of 6 digits standing apart, 150 px tall (``evaluation.numbers``),
the digit one ``paper-210`` photo of ``evaluation.corpus`` (80-300 px tall in 112-400 px). Each round sends ``--requests`` requests of
one kind, one at a time over one kept-alive connection, then as many of the other (the order
alternating from round to round), so that both meet the same load on the machine; a round's
figure is the median latency of its requests. Reported: each kind's median over the rounds,
and the ratio read / predict per round and overall.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.server import ServerProcess, describe_machine
from evaluation import corpus, mnist, numbers

__all__ = ["main", "photos"]

ROOT = Path(__file__).resolve().parent.parent
NUMBER_HEIGHT = 150  # px: the digits of the number photo as tall as the one-digit photo's typically are


def photos(data_dir: Path, seed: int) -> tuple[bytes, str, bytes, int]:
    """The 6-digit number photo and its digits; the one-digit photo and its label."""
    digits = mnist.load(data_dir, train=False)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(digits), size=7, replace=False)
    number = numbers.render_number("paper", digits.images[chosen[:6]], -1, corpus.style_rng(seed, "bench-read", 0), height=NUMBER_HEIGHT)
    single = corpus.render("paper-210", digits.images[chosen[6]], seed, 0)
    return number, "".join(str(int(digits.labels[i])) for i in chosen[:6]), single, int(digits.labels[chosen[6]])


def _latencies(http: httpx.Client, path: str, data: bytes, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        response = http.post(path, files=[("files", ("photo.jpg", data, "image/jpeg"))])
        seconds.append(time.perf_counter() - started)
        response.raise_for_status()
    return seconds


def measure(url: str, number: bytes, single: bytes, rounds: int, requests: int) -> dict[str, object]:
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        read_text = http.post("/read", files=[("files", ("n.jpg", number, "image/jpeg"))]).json()["readings"][0]["text"]
        label = http.post("/predict", files=[("files", ("d.jpg", single, "image/jpeg"))]).json()["predictions"][0]["label"]
        _latencies(http, "/read", number, requests // 2)  # warm: caches, thread pools, the batcher
        _latencies(http, "/predict", single, requests // 2)
        per_round = []
        for index in range(rounds):
            kinds = [("/read", number), ("/predict", single)]
            medians = {
                path: statistics.median(_latencies(http, path, data, requests)) for path, data in kinds[:: 1 if index % 2 == 0 else -1]
            }
            per_round.append(medians)
    read_ms = [1000 * r["/read"] for r in per_round]
    predict_ms = [1000 * r["/predict"] for r in per_round]
    return {
        "read_text": read_text,
        "predict_label": label,
        "read_median_ms": round(statistics.median(read_ms), 2),
        "predict_median_ms": round(statistics.median(predict_ms), 2),
        "ratio": round(statistics.median(read_ms) / statistics.median(predict_ms), 2),
        "ratio_per_round": [round(r / p, 2) for r, p in zip(read_ms, predict_ms, strict=True)],
        "rounds": rounds,
        "requests_per_round": requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server; without it `python -m service` is started here (one worker)")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"), help="MNIST in torchvision's layout")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=30, help="requests of each kind per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    number, digits, single, label = photos(args.data_dir, args.seed)
    if args.url:
        result = measure(args.url.rstrip("/"), number, single, args.rounds, args.requests)
    else:
        server = ServerProcess("read", {}, Path("/tmp"), ROOT / "weights")
        try:
            server.start()
            result = measure(server.url, number, single, args.rounds, args.requests)
        finally:
            server.stop()
    result = {"command": "python -m bench.read " + " ".join(sys.argv[1:]), "number": digits, "digit": label, **result}
    result["machine"] = describe_machine()
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
