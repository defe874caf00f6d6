"""Structured JSON-lines logging with the correlation id of the request or event at hand."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation_id, extras.

    Written once per HTTP request, so it is kept cheap: the second of the timestamp is
    formatted once per second, and orjson encodes the line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
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
