"""The client as a distribution: ``pip install ./client`` brings httpx and pydantic, and nothing of the server.

Both tests build from a copy of ``client/``, so the build's ``build/`` and ``*.egg-info``
never land in the source tree.
"""

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import digits_client
from tests.conftest import ROOT

CLIENT = ROOT / "client"


def copy_of_client(tmp_path: Path) -> Path:
    target = tmp_path / "client"
    shutil.copytree(CLIENT, target, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    return target


def clean_environment() -> dict[str, str]:
    """This process's environment without what would let a child see the repository's or this venv's packages."""
    environment = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}}
    return {**environment, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def test_the_wheel_requires_only_httpx_and_pydantic(tmp_path: Path) -> None:
    source = copy_of_client(tmp_path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environment(),
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("digits_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    message = email.message_from_string(metadata)
    assert message["Name"] == "digits-client"
    requirements = message.get_all("Requires-Dist", [])
    required = {re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0].lower() for r in requirements if "extra ==" not in r}
    assert required == {"httpx", "pydantic"}, requirements
    assert "digits = digits_client.cli:main" in entry_points
    assert "digits_client/py.typed" in names
    assert {n.split("/")[0] for n in names} == {"digits_client", wheel.name.split("-py")[0] + ".dist-info"}  # no server code


@pytest.mark.slow
def test_a_fresh_venv_gets_the_client_without_torch(tmp_path: Path) -> None:
    """A venv of its own (no system site-packages), ``pip install ./client`` from the package index: about 15 s."""
    source = copy_of_client(tmp_path)
    venv = tmp_path / "venv"
    environment = clean_environment()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=environment)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)], capture_output=True, text=True, timeout=300, env=environment
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    def run(*command: str) -> str:
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, env=environment)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "predict" in run(str(venv / "bin" / "digits"), "--help")
    assert run(str(python), "-m", "digits_client", "--version").strip() == f"digits {digits_client.__version__}"
    check = (
        "import importlib.util, sys\n"
        "from digits_client import AsyncClient, Client\n"
        "import digits_client.cli\n"
        "assert 'torch' not in sys.modules\n"
        "print(sorted(m for m in ('torch', 'fastapi', 'service', 'numpy', 'PIL') if importlib.util.find_spec(m)))\n"
    )
    assert run(str(python), "-c", check).strip() == "[]"  # none of them is even installed
