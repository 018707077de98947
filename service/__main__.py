"""``python -m service``: serve with uvicorn on $HOST:$PORT.

Every setting can also be given as a flag (``--port 8123``, ``--workers 4``; see
``--help``); a flag wins over the environment. An unknown flag is an error, not ignored.
With ``DIGITS_WORKERS`` = 1 one process does everything; above 1, ``service.workers``
runs that many HTTP worker processes and one inference process.
"""

import sys
from collections.abc import Sequence

from pydantic import ValidationError

from service.config import Settings
from service.logs import configure_logging


def parse_settings(argv: Sequence[str]) -> Settings:
    """The environment's settings, overridden by command-line flags (pydantic-settings' CLI)."""
    return Settings(_cli_parse_args=list(argv), _cli_prog_name="python -m service", _cli_kebab_case=True)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ValidationError as exc:  # a bad value in a flag or the environment: say which, no traceback
        for error in exc.errors():
            print(f"invalid setting {'.'.join(map(str, error['loc']))}={error['input']!r}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if settings.workers > 1:
        from service.workers import serve_workers

        return serve_workers(settings)
    from service.app import create_app
    from service.server import serve_http

    return 0 if serve_http(create_app(settings), settings) else 1


if __name__ == "__main__":
    sys.exit(main())
