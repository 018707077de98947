"""The layers import only downward: core (torch-free) <- models <- service; the lab on top.

Read from the source with ``ast``, so an import inside a function counts as well.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# package -> the first-party packages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "weights": set(),
    "models": {"core", "weights"},
    "service": {"core", "models", "weights"},
}
FIRST_PARTY = {"core", "weights", "models", "service", "evaluation", "bench", "tests", "digits_client"}


def imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", list(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported(path):
            top = name.split(".")[0]
            if top in FIRST_PARTY and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_core_needs_neither_torch_nor_a_web_framework() -> None:
    code = (
        "import sys, core.spec, core.errors, core.preprocess, core.digit_rule; "
        "loaded = {'torch', 'fastapi', 'pydantic', 'starlette'} & {m.split('.')[0] for m in sys.modules}; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_supervisor_needs_neither_torch_nor_the_http_stack() -> None:
    """``python -m service`` with several workers only starts and watches processes: each child
    imports what it runs (the inference process torch, the HTTP workers the app)."""
    code = (
        "import sys, service.__main__, service.workers, service.supervisor; "
        "loaded = {'torch', 'fastapi', 'starlette', 'uvicorn', 'numpy', 'PIL'} & {m.split('.')[0] for m in sys.modules}; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
