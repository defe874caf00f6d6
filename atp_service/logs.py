"""Structured JSON-lines logging with the correlation id of the request or event at hand."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

#: The correlation id of the HTTP request or inbound event being handled, if any.
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "correlation_id", default=None
)

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message"}  # uvicorn's ANSI-coloured copy of msg
)
# Never written to a log line, whatever a caller passes as `extra`.
_SECRET_KEYS = frozenset({"authorization", "api_key", "key", "password", "token", "secret"})


class _Timestamps:
    """``2026-11-23T05:00:00.123+00:00`` of a ``time.time()``, the second formatted once."""

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation_id, extras.

    A record carrying ``preformatted`` (``AccessLog``) is those lines already.
    """

    def __init__(self) -> None:
        super().__init__()
        self._timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        preformatted = getattr(record, "preformatted", None)
        if preformatted is not None:
            return str(preformatted)
        line: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None) or correlation_id.get()
        if cid is not None:
            line["correlation_id"] = cid
        attrs = record.__dict__
        for name in attrs.keys() - _STANDARD_ATTRS:
            if name == "correlation_id" or name.startswith("_"):
                continue
            line[name] = "[redacted]" if name.lower() in _SECRET_KEYS else attrs[name]
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # e.g. an int beyond 64 bits among the extras
            return json.dumps(line, default=str, separators=(",", ":"))


class AccessLog:
    """The API's line per request, as ``JsonFormatter`` writes lines, handed to logging in
    batches (``flush``, every 0.1 s from the API's background tasks, or when
    ``max_pending`` lines wait): a ``LogRecord``, a handler lock and a stream flush per
    request cost about as much as FastAPI's own work on a request. A line is written at
    most about 0.1 s late; other logging is not affected.
    """

    def __init__(self, name: str = "atp.access", max_pending: int = 1000) -> None:
        self.logger = logging.getLogger(name)
        self.max_pending = max_pending
        self._pending: list[tuple[float, str, str, int, float, str, str | None]] = []
        self._timestamp = _Timestamps()

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def record(
        self,
        method: str,
        route: str,
        status: int,
        duration_ms: float,
        correlation: str,
        caller: str | None = None,
    ) -> None:
        """``caller``: the name of the request's API key (None: none was recognised)."""
        self._pending.append((time.time(), method, route, status, duration_ms, correlation, caller))
        if len(self._pending) >= self.max_pending:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        name, stamp = self.logger.name, self._timestamp
        lines = [
            orjson.dumps(
                {
                    "ts": stamp(created),
                    "level": "info",
                    "logger": name,
                    "msg": f"{method} {route} {status}",
                    "correlation_id": correlation,
                    "status": status,
                    "duration_ms": duration_ms,
                    "caller": caller,
                }
            ).decode()
            for created, method, route, status, duration_ms, correlation, caller in pending
        ]
        record = self.logger.makeRecord(
            name, logging.INFO, "", 0, "%d requests", (len(lines),), None
        )
        record.preformatted = "\n".join(lines)
        self.logger.handle(record)


def _skip_unused_record_fields() -> None:
    """The JSON lines never show the caller's file, line, thread or process: stop logging
    from looking them up for every record (the logging HOWTO's "Optimization"), which is
    most of the cost of the API's line per request."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Route the root logger (and uvicorn's, faust's) to stderr as JSON lines."""
    _skip_unused_record_fields()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # One line per request comes from the API's own middleware, not uvicorn's access log.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def json_logging_config(level: str = "INFO") -> dict[str, Any]:
    """The same JSON lines as a ``logging.config.dictConfig`` (for faust/mode's worker)."""
    _skip_unused_record_fields()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "json", "level": level}
        },
        "root": {"level": level, "handlers": ["default"]},
    }
