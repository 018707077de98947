"""The distribution's version, read by the build (pyproject.toml) and sent in the User-Agent."""

__version__ = "1.0.0"
