"""Cursor pagination for every list: ``{"results": [...], "next": url|null, "previous": ...}``."""

from __future__ import annotations

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import connections
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

    def paginate_queryset(self, queryset, request, view=None):
        self._queryset = queryset
        return super().paginate_queryset(queryset, request, view=view)

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None:
                self._check_position(cursor.position)
        except Exception as exc:  # DRF answers 404 for a bad cursor; it is bad input.
            if request.query_params.get(self.cursor_query_param) is None:
                raise
            raise InvalidInput(
                "The cursor is invalid.", fields={"cursor": ["Invalid cursor."]}
            ) from exc
        return cursor

    def _check_position(self, position: str) -> None:
        """A cursor's position is client input: it must be a value of the ordering field.

        DRF filters on it as is, so "abc", "" or "1e999" for an integer id would fail in
        the query (a 500), and an id beyond bigint would reach the database.
        """
        queryset = getattr(self, "_queryset", None)
        if queryset is None or not hasattr(queryset, "model"):
            return
        name = self.ordering[0].lstrip("-")
        try:
            field = queryset.model._meta.get_field(name)
        except FieldDoesNotExist:
            return  # an annotation: leave it to the database
        if position == "":
            raise ValidationError("empty position")
        value = field.to_python(position)
        field.run_validators(value)  # integer fields carry the database's range
        field.get_db_prep_value(value, connection=connections[queryset.db], prepared=False)
