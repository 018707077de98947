"""The README and docs/ stay true: every setting is documented, links resolve, and the
figures they quote are those of the committed metadata and results files."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 400
# [text](target) and ![alt](target); the target ends at whitespace or the closing bracket
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SETTING_ROW = re.compile(r"^\| `((?:DIGITS_[A-Z0-9_]+)|HOST|PORT)` \|", re.MULTILINE)


def _env_name(field: str) -> str:
    return field.upper() if field in ("host", "port") else f"DIGITS_{field.upper()}"


def _json(path: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / path).read_text())
    return data


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in markdown.splitlines() if re.match(r"#{1,6} ", line)}


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    for name in Settings.model_fields:
        env = _env_name(name)
        assert f"| `{env}` |" in README, f"{env} is not documented in README.md"


def test_the_readme_documents_no_setting_that_does_not_exist() -> None:
    known = {_env_name(name) for name in Settings.model_fields}
    documented = SETTING_ROW.findall(README)
    assert documented, "the README has no settings table"
    assert sorted(set(documented) - known) == [], "README.md documents settings that service/config.py does not have"
    assert len(documented) == len(set(documented)), "a setting has two rows in README.md"


def test_quickstart_shows_the_two_commands() -> None:
    assert "make serve" in README and "make test" in README


def test_the_readme_is_short_enough_to_read() -> None:
    lines = len(README.splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move lab material into docs/ (at most {MAX_README_LINES})"


@pytest.mark.parametrize("document", [ROOT / "README.md", *DOCS], ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document: Path) -> None:
    text = document.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, fragment = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and file.suffix == ".md" and fragment not in _anchors(file.read_text()):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{document.name}: broken links {broken}"


@pytest.mark.parametrize("name", ["inception", "resnet", "ensemble"])
def test_the_readme_accuracy_is_the_committed_metadata(name: str) -> None:
    meta = _json(f"weights/{name}.json")
    metrics = meta["metrics"]
    row = next((line for line in README.splitlines() if line.startswith(f"| `{name}` |")), None)
    assert row is not None, f"README.md's accuracy table has no row for {name}"
    assert f"| {meta['parameters']:,} |" in row
    assert f"| {100 * metrics['val_accuracy']:.2f}% |" in row
    assert f"**{100 * metrics['test_accuracy']:.2f}%** ({metrics['test_errors']} errors)" in row
    assert f"| {100 * meta['calibration']['test_ece_after']:.2f}% |" in row


def test_the_real_world_table_is_the_committed_result() -> None:
    evaluation = (ROOT / "docs" / "evaluation.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in evaluation.splitlines() if line.startswith("| `")}
    baseline = {style["style"]: style for style in _json("evaluation/results/realworld-preprocess-9ff2348.json")["styles"]}
    for style in _json("evaluation/results/realworld.json")["styles"]:
        row = rows.get(f"`{style['style']}`")
        assert row is not None, f"docs/evaluation.md has no row for style {style['style']}"
        errors = style["images"] - style["correct"]
        assert f"**{100 * style['accuracy']:.1f}%** ({errors})" in row, row
        assert f"| {100 * baseline[style['style']]['accuracy']:.1f}% |" in row, row
        assert row.rstrip().endswith(f"| {100 * style['not_digit'] / style['images']:.1f}% |"), row


@pytest.mark.parametrize("name", ["inception", "resnet", "ensemble"])
def test_the_is_digit_tables_are_the_committed_metadata(name: str) -> None:
    rule = _json(f"weights/{name}.json")["is_digit"]
    validation, test = rule["validation"], rule["test"]
    training = (ROOT / "docs" / "training.md").read_text()
    row = next((line for line in training.splitlines() if line.startswith(f"| {name} | {rule['threshold']:.3f} |")), None)
    assert row is not None, f"docs/training.md's is_digit table has no row for {name} with its threshold"
    for rate in (validation["digits_rejected"], validation["non_digits_rejected"], test["digits_rejected"], test["non_digits_rejected"]):
        assert f"{100 * rate:.1f}%" in row.replace("**", "") or f"{100 * rate:.2f}%" in row, f"{name}: {rate} not in {row}"


@pytest.mark.parametrize("name", ["inception", "resnet", "ensemble"])
def test_the_piece_threshold_table_is_the_committed_metadata(name: str) -> None:
    rule = _json(f"weights/{name}.json")["is_digit"]
    training = (ROOT / "docs" / "training.md").read_text()
    row = next((line for line in training.splitlines() if line.startswith(f"| {name} | {rule['piece_threshold']:.3f} |")), None)
    assert row is not None, f"docs/training.md's piece_threshold table has no row for {name} with its threshold"
    for split in ("validation", "test"):
        for key in ("digits_rejected_as_pieces", "non_digits_rejected_as_pieces"):
            rate = rule[split][key]
            assert f"{100 * rate:.1f}%" in row or f"{100 * rate:.2f}%" in row, f"{name}: {split} {key} {rate} not in {row}"
