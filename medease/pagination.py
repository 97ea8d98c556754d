"""Cursor pagination for every list: ``{"results": [...], "next": url|null, "previous": ...}``."""

from __future__ import annotations

from rest_framework import pagination

from medease.exceptions import InvalidInput

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


class CursorPagination(pagination.CursorPagination):
    """Stable, opaque cursors; ``?limit=`` from 1 to 100 (default 20)."""

    page_size = DEFAULT_PAGE_SIZE
    page_size_query_param = "limit"
    max_page_size = MAX_PAGE_SIZE
    ordering = "-id"

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(
                "limit must be a whole number.", fields={"limit": ["Must be an integer."]}
            ) from None
        if value < 1:
            raise InvalidInput("limit must be at least 1.", fields={"limit": ["Must be ≥ 1."]})
        return min(value, self.max_page_size)

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except Exception as exc:  # DRF answers 404 for a bad cursor; it is bad input.
            if request.query_params.get(self.cursor_query_param) is None:
                raise
            raise InvalidInput(
                "The cursor is invalid.", fields={"cursor": ["Invalid cursor."]}
            ) from exc
