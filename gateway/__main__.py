"""``python -m gateway``: serve the gateway with uvicorn."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from gateway.app import create_app
from gateway.auth import KeyRing
from gateway.connections import guarded_protocol, make_fd_room
from gateway.datadir import MIB, check_data_dir, check_database, hold_data_dir
from gateway.drain import Drain, DrainingServer, graceful_timeout_s
from gateway.exceptions import DataDirProblem
from gateway.logs import configure_logging
from gateway.memory.outbox import OUTBOX_FILE
from gateway.secret_strength import check_secrets
from gateway.settings import ENV_PREFIX, Settings, unknown_variables, validation_problems
from gateway.upstream.config import load_upstreams_file


def freeze_startup_heap() -> int:
    """Put what start-up built (modules, classes, the app) out of the garbage
    collector's sight, and return how many objects that is.

    They live as long as the process, yet each full collection walked them all,
    a pause of every request in flight that showed in the memory-on turns' tail
    latency (bench/README.md, "Where the recall's time goes", has the
    measurement). After this, collections walk only
    what serving allocates. ``gc.freeze`` as CPython documents it.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def check_arguments(argv: Sequence[str]) -> int | None:
    """``--help`` (exit code 0), or a refusal of any other argument (2); None when
    there is none. Without this, ``python -m gateway --help`` or ``--port 9000``
    started a gateway on the default port and data dir, saying nothing of them."""
    names = ", ".join(ENV_PREFIX + name.upper() for name in Settings.model_fields)
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Serve memgate, the memory gateway. It takes no arguments: every "
        "setting is an environment variable (docs/configuration.md), read from .env "
        "too by `make run`.",
        epilog=f"settings: {names}",
    )
    try:
        _, extra = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, printed
        return exc.code if isinstance(exc.code, int) else 0
    if extra:
        print(
            f"memgate: python -m gateway takes no arguments (got {' '.join(extra)}): "
            "settings are environment variables, such as GATEWAY_PORT "
            "(python -m gateway --help names them all)",
            file=sys.stderr,
        )
        return 2
    return None


def main(argv: Sequence[str] = ()) -> int:
    refused = check_arguments(argv)
    if refused is not None:
        return refused
    try:
        settings = Settings()
        settings.check_bind_address()
        check_secrets(settings)
        # Built again by the app; here for its refusals (a malformed entry, a key
        # given twice, an unreadable keys file) before the data dir is made.
        KeyRing(settings.api_keys, settings.admin_key, settings.api_keys_file)
        if settings.config is not None:  # loaded again by the app: checked here, for one line
            load_upstreams_file(settings.config)
    except ValidationError as exc:
        problems = validation_problems(exc, env_prefix=ENV_PREFIX)
        print(f"memgate: configuration error: {problems}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"memgate: configuration error: {exc}", file=sys.stderr)
        return 2
    for warning in unknown_variables(os.environ):
        print(f"memgate: warning: {warning}", file=sys.stderr)
    configure_logging(settings.log_level)
    make_fd_room(settings.max_connections)
    try:
        # Before anything opens a file there: one clear line instead of a
        # sqlite3 traceback (unwritable) or a SIGBUS (full disk).
        check_data_dir(settings.data_dir, settings.disk_reserve_mb * MIB)
        held = hold_data_dir(settings.data_dir)  # open while this process serves
        check_database(settings.data_dir / OUTBOX_FILE, "the memory writes not stored yet")
        if not settings.qdrant_url:  # else registered models live on the Qdrant server
            check_database(settings.model_registry_path, "the models registered at run time")
    except DataDirProblem as exc:
        print(f"memgate: {exc}", file=sys.stderr)
        return 3
    drain = Drain(settings.shutdown_grace_s)
    try:
        app = create_app(settings, drain=drain)
    except ValueError as exc:
        print(f"memgate: configuration error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging, configured above
        access_log=False,  # request logs come from our middleware, without content
        # The drain ends what the grace did not see finish; uvicorn cancels only
        # what is still running after that (gateway.drain).
        timeout_graceful_shutdown=graceful_timeout_s(drain.grace_s),
        lifespan="on",
        # uvicorn's httptools protocol plus a header deadline and connection caps
        # (gateway.connections), so slow-header clients cannot hold the server.
        http=guarded_protocol(
            header_timeout_s=settings.header_timeout_s,
            max_header_bytes=settings.max_header_bytes,
            max_connections=settings.max_connections,
            send_timeout_s=settings.send_timeout_s,
        ),
    )
    server = DrainingServer(config, drain)
    freeze_startup_heap()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises Ctrl-C's SIGINT again once it has shut down
        return 130  # the shell's code for SIGINT, without Python's traceback
    finally:
        held.close()
    # uvicorn exits quietly when the lifespan fails (e.g. a dimension mismatch).
    return 0 if server.started else 1


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main(sys.argv[1:]))
