"""--log and --log-format as runc writes them.

Owns the root logger's handler: text lines, or with ``--log-format json`` one JSON object
per line with ``level``, ``msg`` and ``time`` (RFC 3339), the form containerd's runc shim
parses to show the user the last error; and how the error that ends a command is reported,
including one outside hyperpy's exception tree (:func:`report_unexpected`): a call never
fails with nothing in --log, which the shim would show as "unknown".
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time

LEVELS = {
    "DEBUG": "debug",
    "INFO": "info",
    "WARNING": "warning",
    "ERROR": "error",
    "CRITICAL": "fatal",
}


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno < logging.ERROR:
            msg += "\n" + self.formatException(record.exc_info)
        return json.dumps(
            {
                "level": LEVELS.get(record.levelname, "info"),
                "msg": msg,
                "time": _rfc3339(record.created),
            }
        )


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = LEVELS.get(record.levelname, "info")[:4].upper()
        return f"{level}[{_rfc3339(record.created)}] {record.getMessage()}"


def setup(log_file: str | None, log_format: str, debug: bool) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    root.addHandler(handler)


DAEMON_LOG_MAX = 2 << 20  # a daemon's log and its one older half, together


def to_file(path: str, fmt: str, level: int = logging.INFO) -> None:
    """Send the root logger to ``path``, kept to DAEMON_LOG_MAX bytes in two files."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=DAEMON_LOG_MAX // 2,
                                                   backupCount=1)  # fmt: skip
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(handler)
    root.setLevel(level)


class GuestWarnings:
    """Warnings about what the guest sent: the first 20, then every 1000th, counted (a
    guest must not fill the host's log, nor hide that it tried)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.count = 0

    def __call__(self, fmt: str, *args: object) -> None:
        self.count += 1
        if self.count <= 20 or self.count % 1000 == 0:
            self.logger.warning(fmt + f" (guest warning {self.count})", *args)


def report(exc: Exception) -> None:
    """Log the error that ends a command; with --log, also say it on stderr."""
    logging.getLogger("hyperpy").error("%s", exc)
    handlers = logging.getLogger().handlers
    if handlers and isinstance(handlers[0], logging.FileHandler):
        print(f"hyperpy: {exc}", file=sys.stderr)  # the log went to --log only


def report_unexpected(exc: BaseException, verb: str = "") -> None:
    """Log an error outside hyperpy's tree (a bug, or a failure nothing expected) so that
    it still ends the call as one error line: its traceback first, at warning level, then
    the error, last, as the shim wants it (it reads the last error line of --log)."""
    what = f"{verb} failed" if verb else "hyperpy failed"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    logger = logging.getLogger("hyperpy")
    logger.warning("%s with an unexpected error; traceback:", what, exc_info=exc)
    report(RuntimeError(f"{what}: unexpected error: {text} (a bug in hyperpy: the traceback "
                        "is in the log above this line)"))  # fmt: skip
