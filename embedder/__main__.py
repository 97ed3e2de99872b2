"""``python -m embedder``: serve the embedding service."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from embedder.app import create_app
from embedder.logs import configure_logging
from embedder.settings import (
    ENV_PREFIX,
    EmbedderSettings,
    settings_problems,
    unknown_variables,
)


def freeze_startup_heap() -> int:
    """Put what start-up built (modules, classes, the app) out of the garbage
    collector's sight, and return how many objects that is: they live as long
    as the process, and each full collection would walk them all, a pause of
    every request in flight. As the gateway does (``gateway/__main__.py``)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def check_arguments(argv: Sequence[str]) -> int | None:
    """``--help`` (exit code 0), or a refusal of any other argument (2); None when
    there is none. As the gateway's (``gateway/__main__.py``): without it, ``--help``
    loaded the model and served on the default port."""
    names = ", ".join(ENV_PREFIX + name.upper() for name in EmbedderSettings.model_fields)
    parser = argparse.ArgumentParser(
        prog="python -m embedder",
        description="Serve memgate's embedding service. It takes no arguments: every "
        "setting is an environment variable (docs/configuration.md).",
        epilog=f"settings: {names}",
    )
    try:
        _, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, printed
        return exc.code if isinstance(exc.code, int) else 0
    if extra:
        print(
            f"embedder: python -m embedder takes no arguments (got {' '.join(extra)}): "
            "settings are environment variables, such as EMBEDDER_PORT "
            "(python -m embedder --help names them all)",
            file=sys.stderr,
        )
        return 2
    return None


def main(argv: Sequence[str] = ()) -> int:
    refused = check_arguments(argv)
    if refused is not None:
        return refused
    try:
        settings = EmbedderSettings()
    except ValidationError as exc:
        print(f"embedder: configuration error: {settings_problems(exc)}", file=sys.stderr)
        return 2
    for warning in unknown_variables(os.environ):
        print(f"embedder: warning: {warning}", file=sys.stderr)
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
    sys.exit(main(sys.argv[1:]))
