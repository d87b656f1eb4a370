"""Logs without PHI: exception messages and tracebacks can carry resource content (a value
echoed in an error, a local in a frame), so log records keep only the exception's type and
where it was raised (file and line), never its message, arguments or the stack's variables."""

from __future__ import annotations

import logging
import traceback


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
            record.msg = f"{record.getMessage()} [{type(exc).__name__}{where}]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def install() -> None:
    """Add the filter to every handler of the root logger (call after logging is set up)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
