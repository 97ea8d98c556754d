"""Cursor pagination for every list: ``{"results": [...], "next": url|null, "previous": ...}``."""

from __future__ import annotations

from collections.abc import Callable

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

    def paginate_rows(self, fetch: Callable[..., list], request, *, model) -> list:
        """``paginate_queryset`` for a page the caller fetches itself (``values()``-shaped
        dicts of ``model``), with the same cursors and links.

        ``fetch(after=, reverse=, offset=, limit=)`` returns up to ``limit`` rows in
        ``self.ordering`` (reversed if ``reverse``), strictly after (before) ``after`` on the
        first ordering field (None: from the start), skipping ``offset``. The rest is DRF's
        ``CursorPagination.paginate_queryset`` as it is, so ``get_paginated_response``,
        ``get_next_link`` and ``get_previous_link`` work unchanged.
        """
        self.ordering = tuple(self.ordering)
        if self.ordering[0].startswith("-"):
            # DRF flips the position's comparison for a descending first field; the fetch
            # contract here is for ascending ones (the lists that use it).
            raise ValueError("paginate_rows needs an ascending first ordering field")
        if request.query_params.get(self.cursor_query_param) is not None:
            # _check_position reads the model from it; without a cursor it never runs (an
            # empty queryset per first page was a noticeable share of the pagination's CPU).
            self._queryset = model.objects.none()
        self.request = request
        self.page_size = self.get_page_size(request)
        self.base_url = request.build_absolute_uri()
        self.cursor = self.decode_cursor(request)
        offset, reverse, current_position = self.cursor or (0, False, None)
        after = None
        if current_position is not None:
            # Validated by decode_cursor (_check_position): a value of the field.
            after = model._meta.get_field(self.ordering[0]).to_python(current_position)
        results = fetch(after=after, reverse=reverse, offset=offset, limit=self.page_size + 1)
        self.page = list(results[: self.page_size])
        if len(results) > len(self.page):
            has_following_position = True
            following_position = self._get_position_from_instance(results[-1], self.ordering)
        else:
            has_following_position = False
            following_position = None
        if reverse:
            self.page = list(reversed(self.page))
            self.has_next = (current_position is not None) or (offset > 0)
            self.has_previous = has_following_position
            if self.has_next:
                self.next_position = current_position
            if self.has_previous:
                self.previous_position = following_position
        else:
            self.has_next = has_following_position
            self.has_previous = (current_position is not None) or (offset > 0)
            if self.has_next:
                self.next_position = following_position
            if self.has_previous:
                self.previous_position = current_position
        self.display_page_controls = self.has_previous or self.has_next
        return self.page

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
