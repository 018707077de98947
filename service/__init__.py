"""FastAPI service that serves the digit classifiers with server-side dynamic batching."""

__version__ = "1.0.0"
