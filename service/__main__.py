"""``python -m service``: serve with uvicorn on $HOST:$PORT.

Every setting can also be given as a flag (``--port 8123``, ``--max-batch-size 64``; see
``--help``); a flag wins over the environment. An unknown flag is an error, not ignored.

On SIGTERM readiness turns 503 at once (so load balancers stop sending), queued and
in-flight requests are answered, and the process exits within the grace period. As
uvicorn does, the signal is re-raised after the clean shutdown, so the exit status says
"terminated by SIGTERM".
"""

import logging
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from service.app import create_app
from service.config import Settings
from service.runtime import Runtime


class _Server(uvicorn.Server):
    """Turns readiness off the moment a stop signal arrives, before connections drain."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime: Runtime | None = getattr(self.app.state, "runtime", None)
        if runtime is not None:
            runtime.begin_draining()
        super().handle_exit(sig, frame)


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
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stdout)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # our own JSON access log replaces it
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        lifespan="on",
    )
    server = _Server(config, app)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
