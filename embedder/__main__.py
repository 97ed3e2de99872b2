"""``python -m embedder``: serve the embedding service."""

from __future__ import annotations

import gc
import logging
import sys

import uvicorn
from pydantic import ValidationError

from embedder.app import create_app
from embedder.logs import configure_logging
from embedder.settings import EmbedderSettings, settings_problems


def freeze_startup_heap() -> int:
    """Put what start-up built (modules, classes, the app) out of the garbage
    collector's sight, and return how many objects that is: they live as long
    as the process, and each full collection would walk them all, a pause of
    every request in flight. As the gateway does (``gateway/__main__.py``)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def main() -> int:
    try:
        settings = EmbedderSettings()
    except ValidationError as exc:
        print(f"embedder: configuration error: {settings_problems(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    server: uvicorn.Server | None = None

    def stop() -> None:
        # A model that failed to load leaves the service useless: stop serving
        # and exit non-zero so the orchestrator restarts it.
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=settings.host, port=settings.port,
            log_level=settings.log_level, access_log=False,
            log_config=None,  # uvicorn's lines go through our JSON handler too
        )
    )  # fmt: skip
    freeze_startup_heap()
    server.run()
    return 1 if app.state.embedder.status == "failed" else 0


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
