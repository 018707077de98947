"""The README stays true: every setting is documented, and the two commands are shown."""

from pathlib import Path

from service.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    for name in Settings.model_fields:
        env = name.upper() if name in ("host", "port") else f"DIGITS_{name.upper()}"
        assert f"| `{env}` |" in README, f"{env} is not documented in README.md"


def test_quickstart_shows_the_two_commands() -> None:
    assert "make serve" in README and "make test" in README
