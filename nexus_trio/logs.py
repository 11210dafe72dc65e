"""Log set-up (pretty or JSON lines) and the one line written per request.

The request line carries ids, names, numbers and outcomes; never prompt text
and never keys. Level names are read by `nexus_trio.config.log_level_number`, so
``trace`` (below DEBUG, registered here under the name ``TRACE``) and ``warn`` work
wherever a level is set.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from nexus_trio.config import TRACE, LogFormat, LoggingSettings, log_level_number

__all__ = ["configure_logging", "log_request", "request_logger"]

request_logger = logging.getLogger("nexus.request")

# So that records at `TRACE` print as TRACE (and "trace" in JSON), not as "Level 5".
logging.addLevelName(TRACE, "TRACE")

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RequestLine:
    """A request's fields; rendered only if a handler writes the record."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.fields.items() if v is not None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a request line's fields and ``extra`` become keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, RequestLine):
            entry["message"] = "request"
            entry.update(record.msg.fields)
        else:
            entry["message"] = record.getMessage()
        entry.update(
            (k, v) for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and k[0] != "_"
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(settings: LoggingSettings) -> None:
    """Send every log record to stderr in the configured format and level.

    Raises:
        ValueError: a level that is no level name (the loader never lets one through);
            nothing has been changed then.
    """
    level = log_level_number(settings.level)
    components = {
        component_logger(name): log_level_number(level_name)
        for name, level_name in settings.component_levels.items()
    }
    handler = logging.StreamHandler(sys.stderr)
    if settings.format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: that is our own request log's job.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, level))
    for logger, number in components.items():
        logging.getLogger(logger).setLevel(number)


def component_logger(name: str) -> str:
    """The logger a ``logging.component_levels`` key names: ``"registry"`` is
    ``nexus.registry``; a dotted name (``nexus.health``, ``hypercorn.error``) and the
    libraries' own loggers are themselves."""
    if "." in name or name in _LIBRARY_LOGGERS:
        return name
    return f"nexus.{name}"


_LIBRARY_LOGGERS = frozenset({"nexus", "httpx", "httpcore", "hypercorn", "quart", "zeroconf"})


def log_request(fields: dict[str, Any]) -> None:
    """The request's one line: ``key=value`` pairs, or JSON keys with NEXUS_LOG_FORMAT=json."""
    request_logger.info(RequestLine(fields))
