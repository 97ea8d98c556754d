"""Logging helpers: every log line carries the request id of the request that wrote it."""

from __future__ import annotations

import logging
import re

from medease.context import current_request_id

_TICKET_RE = re.compile(r"(ticket=)[^&\s\"']+")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to each record so formatters can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            # django.request logs the response after our middleware has returned, so it
            # is read from the request object the record carries.
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None) or current_request_id()
        return True


class RedactSecretsFilter(logging.Filter):
    """Masks websocket tickets in log lines (uvicorn logs the websocket URL at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # args is a tuple, or a single mapping for "%(name)s"-style messages.
        if isinstance(record.args, tuple):
            record.args = tuple(_redact(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact(value) for key, value in record.args.items()}
        if isinstance(record.msg, str):
            record.msg = _redact(record.msg)
        return True


def _redact(value):
    if isinstance(value, str) and "ticket=" in value:
        return _TICKET_RE.sub(r"\1***", value)
    return value
