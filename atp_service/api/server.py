"""`atp api`: the HTTP service under uvicorn (uvloop, httptools)."""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI

from atp_service.api.app import create_app
from atp_service.config import Settings, get_settings
from atp_service.gc_tuning import tune_for_service
from atp_service.logs import configure_logging

NO_KEYS_MESSAGE = (
    "atp api: refusing to start without API keys. Set ATP_API_KEYS to a JSON list, e.g.\n"
    '  ATP_API_KEYS=\'[{"name": "storefront", "key_sha256": "<sha256 hex of the key>", '
    '"scopes": ["availability:read"]}]\'\n'
    "Scopes: availability:read, reservations:write, admin."
)


def _configure_logging() -> None:
    configure_logging(get_settings().log_level)


def app_from_environment() -> FastAPI:
    """The app of one worker process when ``workers > 1`` (settings from the environment)."""
    _configure_logging()
    app = create_app(get_settings())
    tune_for_service()
    return app


def serve(settings: Settings, host: str, port: int, workers: int = 1) -> None:
    """Serve until SIGINT/SIGTERM. Exits non-zero, with a message, when no API key is set.

    With ``workers > 1`` each worker process reads its settings from the environment
    (the same ``ATP_*`` variables ``settings`` came from).
    """
    if not settings.api_keys:
        print(NO_KEYS_MESSAGE, file=sys.stderr)
        raise SystemExit(2)
    try:
        settings.load_channel_policies()
    except (OSError, ValueError) as exc:
        print(
            f"atp api: cannot read ATP_CHANNELS_FILE {settings.channels_file}: {exc}",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    try:
        settings.load_sites()
    except (OSError, ValueError) as exc:
        print(f"atp api: cannot read ATP_SITES_FILE {settings.sites_file}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _configure_logging()
    app: FastAPI | str = (
        "atp_service.api.server:app_from_environment" if workers > 1 else create_app(settings)
    )
    tune_for_service()  # the process serving (each worker process: app_from_environment)
    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers if workers > 1 else None,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,  # keep the JSON-lines logging configured above
        server_header=False,
        backlog=2048,
        timeout_graceful_shutdown=10,
    )
