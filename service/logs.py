"""Logging for every process of the server: one line per record, the message alone.

Kept apart from the server so that the supervisor, which only starts and watches
processes, configures logging without importing the HTTP stack.
"""

import logging
import sys

from service.config import Settings

__all__ = ["configure_logging"]


def configure_logging(settings: Settings) -> None:
    """One line per record, the message alone (the access log's lines are JSON already)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stdout, force=True)
    # The format names no thread or process: records need not look them up (the logging
    # HOWTO's "Optimization"); it is a per-request cost of the access log.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
