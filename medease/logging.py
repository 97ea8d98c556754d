"""Logging helpers: every log line carries the request id of the request that wrote it."""

from __future__ import annotations

import logging

from medease.context import current_request_id


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to each record so formatters can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            # django.request logs the response after our middleware has returned, so it
            # is read from the request object the record carries.
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None) or current_request_id()
        return True
