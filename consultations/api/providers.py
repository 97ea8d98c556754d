"""Providers (public, cached), their open slots (cached per provider) and availability."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from accounts import selectors as account_selectors
from consultations import caching, selectors, services
from consultations.api._base import ClinicApiView, paginator_for, valid
from consultations.audit import AuditAction, audit_consultations
from consultations.serializers import (
    AvailabilityConfirmInput,
    AvailabilityIO,
    ProviderListInput,
    ProviderOutput,
    SlotOutput,
)
from consultations.services import availability
from consultations.slotting import Window, local_instant
from medease.exceptions import InvalidInput
from medease.schema import error


class ProvidersApi(ClinicApiView):
    """Active providers of every clinic, by id; filter by specialty and organization."""

    @extend_schema(
        summary="List providers",
        parameters=[ProviderListInput],
        responses={200: ProviderOutput(many=True)},
    )
    def get(self, request):
        # Most callers send no filter: nothing to validate (the serializer would be a good
        # part of a cache hit's cost).
        params = valid(ProviderListInput, request.query_params) if request.query_params else {}

        def build() -> dict:
            queryset = account_selectors.providers_list(
                specialty=params.get("specialty"), organization=params.get("organization")
            )
            paginator = paginator_for(("id",))
            page = paginator.paginate_queryset(queryset, request, view=self)
            return paginator.get_paginated_response(ProviderOutput(page, many=True).data).data

        # The same for every caller: keyed by the full URL (filters, cursor, limit, host).
        body = caching.cached(
            scopes=[caching.providers_scope()],
            key=f"providers:{request.build_absolute_uri()}",
            timeout=settings.PROVIDERS_CACHE_SECONDS,
            build=build,
        )
        return Response(body)


def _parse_instant(raw: str, *, tz: ZoneInfo, field: str) -> datetime:
    """An ISO datetime (with or without offset) or a date (local midnight of the viewer)."""
    # A "+" in a query string arrives as a space ("...T10:00:00 02:00").
    candidate = raw.strip().replace(" ", "+") if "T" in raw else raw.strip()
    try:
        value = parse_datetime(candidate)
        if value is None:
            day = parse_date(candidate)
            if day is None:
                raise ValueError(raw)
            return local_instant(day, time(0), tz)
        if timezone.is_naive(value):
            return local_instant(value.date(), value.time(), tz)
        # In UTC now: an instant near year 1 or 9999 that has no UTC form is refused here.
        return value.astimezone(UTC)
    except ValueError:
        raise InvalidInput(
            f"{field} must be an ISO 8601 date or datetime.", fields={field: ["Invalid."]}
        ) from None
    except OverflowError:
        raise InvalidInput(f"{field} is out of range.", fields={field: ["Out of range."]}) from None


class ProviderSlotsApi(ClinicApiView):
    """Open slots of a provider starting in [start, end) (default: the next 7 days).

    Cached per provider; bookings, cancellations and availability changes invalidate it.
    """

    @extend_schema(
        summary="List a provider's open slots",
        parameters=[
            OpenApiParameter("start", str, description="ISO date or datetime (default now)"),
            OpenApiParameter("end", str, description="ISO date or datetime (default +7 days)"),
        ],
        responses={200: SlotOutput(many=True)},
    )
    def get(self, request, provider_id: int):
        tz = timezone.get_current_timezone()
        # Whole minutes, so requests without ?start= share a cache entry for a minute.
        now = timezone.now().replace(second=0, microsecond=0)
        raw_start, raw_end = request.query_params.get("start"), request.query_params.get("end")
        start = _parse_instant(raw_start, tz=tz, field="start") if raw_start else now
        if raw_end:
            end = _parse_instant(raw_end, tz=tz, field="end")
        else:
            try:
                end = start + timedelta(days=7)
            except OverflowError:  # start=9999-12-31: no week after it
                raise InvalidInput(
                    "start is out of range.", fields={"start": ["Out of range."]}
                ) from None
        if end <= start:
            raise InvalidInput("end must be after start.", fields={"end": ["Must be after start."]})
        max_days = settings.SLOTS_MAX_WINDOW_DAYS
        if end - start > timedelta(days=max_days):
            raise InvalidInput(
                "The window is too long.",
                fields={"end": [f"At most {max_days} days after start."]},
            )

        def build() -> dict:
            # The provider is looked up on a miss only: the entry also depends on the
            # providers scope, which every provider change (a deactivation too) renews, so
            # an entry never outlives its provider. A 404 raises here and is not cached.
            provider = selectors.provider_get(provider_id=provider_id)
            queryset = selectors.slots_open(provider_id=provider.pk, start=start, end=end)
            paginator = paginator_for(("start", "id"))
            page = paginator.paginate_queryset(queryset, request, view=self)
            return paginator.get_paginated_response(SlotOutput(page, many=True).data).data

        key = "|".join(
            ["slots", request.build_absolute_uri(), str(tz), start.isoformat(), end.isoformat()]
        )
        data = caching.cached(
            scopes=[caching.slots_scope(provider_id), caching.providers_scope()],
            key=key,
            timeout=settings.SLOTS_CACHE_SECONDS,
            build=build,
        )
        return Response(data)


class ProviderAvailabilityApi(ClinicApiView):
    """The provider's weekly windows and upcoming exceptions (that provider, clinic staff).

    PUT replaces the parts it names (a missing key keeps that part) and re-materializes the
    slots. Blocking booked time answers 409 ``availability_conflicts`` listing the visits in
    ``fields.conflicts``; with ``confirm`` (body or ``?confirm=1``) they are cancelled.
    """

    def _body(self, provider) -> dict:
        tz = ZoneInfo(provider.timezone)
        today = timezone.now().astimezone(tz).date()
        return {
            "provider": provider.pk,
            "timezone": provider.timezone,
            "windows": list(selectors.availability_windows(provider=provider)),
            "exceptions": list(
                selectors.availability_exceptions(provider=provider, from_date=today)
            ),
        }

    @extend_schema(summary="Read a provider's availability", responses={200: AvailabilityIO})
    def get(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        return Response(AvailabilityIO(self._body(provider)).data)

    @extend_schema(
        summary="Replace a provider's availability",
        request=AvailabilityIO,
        parameters=[
            OpenApiParameter(
                "confirm", bool, description="Like the body's `confirm` (cancel the conflicts)"
            )
        ],
        responses={
            200: AvailabilityIO,
            **error(
                409,
                "availability_conflicts",
                description=(
                    "`availability_conflicts`: the change blocks booked time; "
                    "`fields.conflicts` lists `{id, patient, patient_name, scheduled_start, "
                    "scheduled_end}` of each visit. Send it again with `confirm` to cancel them."
                ),
            ),
        },
    )
    def put(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        data = valid(AvailabilityIO, request.data)
        in_query = valid(AvailabilityConfirmInput, request.query_params)["confirm"]
        confirm = data["confirm"] or in_query
        # A key left out keeps that part as it is; an empty list clears it.
        windows = data.get("windows")
        exceptions = data.get("exceptions")
        try:
            cancelled = availability.availability_replace(
                provider=provider,
                windows=None
                if windows is None
                else [Window(w["weekday"], w["start_time"], w["end_time"]) for w in windows],
                exceptions=None
                if exceptions is None
                else [
                    services.ExceptionSpec(
                        date=e["date"],
                        kind=e["kind"],
                        start_time=e.get("start_time"),
                        end_time=e.get("end_time"),
                        note=e.get("note", ""),
                    )
                    for e in exceptions
                ],
                actor=request.user,
                on_conflict="cancel" if confirm else "refuse",
            )
        except availability.AvailabilityConflicts as exc:
            # The 409 shows the editor who is booked: a PHI read.
            audit_consultations(
                request=request, action=AuditAction.READ, consultations=exc.consultations
            )
            raise
        if cancelled:
            audit_consultations(request=request, action=AuditAction.UPDATE, consultations=cancelled)
        return Response(AvailabilityIO(self._body(provider)).data)
