"""How readable is an 8x8 thumbnail at all? Classifiers trained on the thumbnails themselves.

The corpus's ``lowres-8`` and ``onebit-8-up`` styles shrink each digit to 8x8 pixels (grey,
or 1 bit at 0.4 of the brightest pixel: ``evaluation.corpus.small_digit``). This script
renders the training and validation splits the same way and fits two small classifiers
straight on the 64 pixels (an MLP and a CNN, seeded), so the served models' accuracy on
those styles can be read against what the thumbnails still hold. Validation only: the test
set is never read.

    python -m evaluation.ceiling --data-dir ../shared/data --out evaluation/results/ceiling.json
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evaluation.corpus import small_digit
from models.data import load_mnist, split_validation

SIDE = 8
ONE_BIT_LEVEL = 0.4  # as the corpus: ink where the pixel reaches 0.4 of the brightest


def thumbnails(images: np.ndarray, one_bit: bool) -> torch.Tensor:
    """N x 28 x 28 uint8 -> N x 1 x 8 x 8 float thumbnails, grey or 1-bit."""
    out = np.empty((len(images), 1, SIDE, SIDE), np.float32)
    for i, digit in enumerate(images):
        small = small_digit(digit, SIDE)
        out[i, 0] = (small >= ONE_BIT_LEVEL * float(small.max())).astype(np.float32) if one_bit else small
    return torch.from_numpy(out)


def mlp() -> nn.Module:
    hidden = [nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.2)]
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 512), nn.ReLU(), nn.Dropout(0.2), *hidden, nn.Linear(512, 10))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(),  # N x 64 x 8 x 8
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),  # N x 128 x 4 x 4
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10),
    )  # fmt: skip


def fit(net: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], epochs: int) -> list[float]:
    """Validation accuracy after each epoch (AdamW, cosine schedule, batch 256)."""
    (x, y), (vx, vy) = train, val
    optimiser = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 255) // 256)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
    history = []
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(x)).split(256):
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            history.append(round(float((net(vx).argmax(1) == vy).double().mean()), 4))
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    train, val = split_validation(load_mnist(args.data_dir, train=True, download=False), 5000, 2024)
    results: dict[str, dict[str, object]] = {}
    for kind, one_bit in (("8x8 grey", False), ("8x8 1-bit", True)):
        data = (thumbnails(train.images.numpy(), one_bit), train.labels), (thumbnails(val.images.numpy(), one_bit), val.labels)
        for name, build in (("mlp", mlp), ("cnn", cnn)):
            history = fit(build(), *data, args.epochs)
            results[f"{kind}, {name}"] = {"best_val_accuracy": max(history), "history": history}
            print(f"{kind:10s} {name}: best validation accuracy {100 * max(history):.2f}% over {args.epochs} epochs", flush=True)
    report = {
        "command": "python -m evaluation.ceiling --data-dir ../shared/data --out evaluation/results/ceiling.json",
        "split": "validation (5,000 images, split seed 2024); trained on the other 55,000",
        "thumbnail": f"evaluation.corpus.small_digit(digit, {SIDE}); 1-bit at {ONE_BIT_LEVEL} of the brightest pixel",
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
