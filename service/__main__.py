"""``python -m service``: serve with uvicorn on $HOST:$PORT.

On SIGTERM readiness turns 503 at once (so load balancers stop sending), queued and
in-flight requests are answered, and the process exits within the grace period. As
uvicorn does, the signal is re-raised after the clean shutdown, so the exit status says
"terminated by SIGTERM".
"""

import logging
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

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


def main() -> int:
    settings = Settings()
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
