"""Clinic-core API: providers, slots, availability, consultations, queue, records, dashboard.

Views are thin: parse, find the object through a selector scoped to the caller (another
user's object is 404), call one service, serialize, audit PHI access. Datetimes are shown
in the caller's timezone.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts.models import Role
from consultations import caching, conf, selectors, services
from consultations.audit import AuditAction, audit_consultations, audit_log
from consultations.permissions import require_patient
from consultations.serializers import (
    AvailabilityIO,
    BookInput,
    CancelInput,
    CompleteInput,
    ConsultationListInput,
    ConsultationOutput,
    ProviderListInput,
    ProviderOutput,
    QueueEntryOutput,
    QueueJoinInput,
    RecordEntryOutput,
    RecordInput,
    RecordListInput,
    RescheduleInput,
    SlotOutput,
)
from consultations.slotting import Window, local_instant
from medease import ratelimit
from medease.exceptions import InvalidInput
from medease.pagination import CursorPagination

CONSULTATION_ORDERING = ("scheduled_start", "id")
_IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")


def _paginator(ordering: tuple[str, ...]) -> CursorPagination:
    paginator = CursorPagination()
    paginator.ordering = ordering
    return paginator


def _is_clinician(user) -> bool:
    return user.role in (Role.PROVIDER, Role.STAFF)


class ClinicApiView(APIView):
    """Base view: renders datetimes in the authenticated caller's timezone."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        tz_name = getattr(request.user, "timezone", None)
        if tz_name:
            timezone.activate(ZoneInfo(tz_name))

    def finalize_response(self, request, response, *args, **kwargs):
        timezone.deactivate()
        return super().finalize_response(request, response, *args, **kwargs)

    def consultation_body(self, consultation, *, status_code: int = 200) -> Response:
        user = self.request.user
        unread = selectors.unread_count_for(user=user, consultation=consultation)
        context = {"unread_counts": {consultation.pk: unread}, "clinician": _is_clinician(user)}
        return Response(ConsultationOutput(consultation, context=context).data, status=status_code)


def _valid(serializer_cls, data):
    serializer = serializer_cls(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


# --- Providers and slots --------------------------------------------------------------------


class ProvidersApi(ClinicApiView):
    """Active providers of every clinic, by id; filter by specialty and organization."""

    @extend_schema(parameters=[ProviderListInput], responses={200: ProviderOutput(many=True)})
    def get(self, request):
        params = _valid(ProviderListInput, request.query_params)

        def build() -> dict:
            queryset = account_selectors.providers_list(
                specialty=params.get("specialty"), organization=params.get("organization")
            )
            paginator = _paginator(("id",))
            page = paginator.paginate_queryset(queryset, request, view=self)
            return paginator.get_paginated_response(ProviderOutput(page, many=True).data).data

        # The same for every caller: keyed by the full URL (filters, cursor, limit, host).
        body = caching.cached(
            scopes=[caching.providers_scope()],
            key=f"providers:{request.build_absolute_uri()}",
            timeout=conf.providers_cache_seconds(),
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
    except ValueError:
        raise InvalidInput(
            f"{field} must be an ISO 8601 date or datetime.", fields={field: ["Invalid."]}
        ) from None
    if timezone.is_naive(value):
        return local_instant(value.date(), value.time(), tz)
    return value


class ProviderSlotsApi(ClinicApiView):
    """Open slots of a provider starting in [start, end) (default: the next 7 days).

    Cached per provider; bookings, cancellations and availability changes invalidate it.
    """

    @extend_schema(
        parameters=[
            OpenApiParameter("start", str, description="ISO date or datetime (default now)"),
            OpenApiParameter("end", str, description="ISO date or datetime (default +7 days)"),
        ],
        responses={200: SlotOutput(many=True)},
    )
    def get(self, request, provider_id: int):
        provider = selectors.provider_get(provider_id=provider_id)
        tz = timezone.get_current_timezone()
        # Whole minutes, so requests without ?start= share a cache entry for a minute.
        now = timezone.now().replace(second=0, microsecond=0)
        raw_start, raw_end = request.query_params.get("start"), request.query_params.get("end")
        start = _parse_instant(raw_start, tz=tz, field="start") if raw_start else now
        end = _parse_instant(raw_end, tz=tz, field="end") if raw_end else start + timedelta(days=7)
        if end <= start:
            raise InvalidInput("end must be after start.", fields={"end": ["Must be after start."]})
        if end - start > conf.slots_max_window():
            raise InvalidInput(
                "The window is too long.",
                fields={"end": [f"At most {conf.slots_max_window().days} days after start."]},
            )

        def build() -> dict:
            queryset = selectors.slots_open(provider_id=provider.pk, start=start, end=end)
            paginator = _paginator(("start", "id"))
            page = paginator.paginate_queryset(queryset, request, view=self)
            return paginator.get_paginated_response(SlotOutput(page, many=True).data).data

        key = "|".join(
            ["slots", request.build_absolute_uri(), str(tz), start.isoformat(), end.isoformat()]
        )
        data = caching.cached(
            scopes=[caching.slots_scope(provider.pk)],
            key=key,
            timeout=conf.slots_cache_seconds(),
            build=build,
        )
        return Response(data)


class ProviderAvailabilityApi(ClinicApiView):
    """The provider's weekly windows and upcoming exceptions (that provider, clinic staff).

    PUT replaces both (an absent ``exceptions`` means none) and re-materializes the slots.
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

    @extend_schema(responses={200: AvailabilityIO})
    def get(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        return Response(AvailabilityIO(self._body(provider)).data)

    @extend_schema(request=AvailabilityIO, responses={200: AvailabilityIO})
    def put(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        data = _valid(AvailabilityIO, request.data)
        services.availability_replace(
            provider=provider,
            windows=[Window(w["weekday"], w["start_time"], w["end_time"]) for w in data["windows"]],
            exceptions=[
                services.ExceptionSpec(
                    date=e["date"],
                    kind=e["kind"],
                    start_time=e.get("start_time"),
                    end_time=e.get("end_time"),
                    note=e.get("note", ""),
                )
                for e in data.get("exceptions", [])
            ],
        )
        return Response(AvailabilityIO(self._body(provider)).data)


# --- Consultations ------------------------------------------------------------------------


class ConsultationsApi(ClinicApiView):
    """GET: the caller's consultations by scheduled start. POST: a patient books a slot."""

    @extend_schema(
        parameters=[ConsultationListInput], responses={200: ConsultationOutput(many=True)}
    )
    def get(self, request):
        params = _valid(ConsultationListInput, request.query_params)
        queryset = selectors.consultations_for_user(user=request.user, status=params.get("status"))
        paginator = _paginator(CONSULTATION_ORDERING)
        page = paginator.paginate_queryset(queryset, request, view=self)
        unread = selectors.unread_counts_for(
            user=request.user, consultation_ids=[c.pk for c in page]
        )
        context = {"unread_counts": unread, "clinician": _is_clinician(request.user)}
        data = ConsultationOutput(page, many=True, context=context).data
        audit_consultations(request=request, action=AuditAction.READ, consultations=page)
        return paginator.get_paginated_response(data)

    @extend_schema(
        request=BookInput,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={201: ConsultationOutput, 200: ConsultationOutput},
    )
    def post(self, request):
        require_patient(request.user, action="book consultations")
        key = request.headers.get("Idempotency-Key", "").strip()
        if key and not _IDEMPOTENCY_KEY_RE.match(key):
            raise InvalidInput(
                "Idempotency-Key must be 1 to 128 printable ASCII characters.",
                fields={"Idempotency-Key": ["Invalid."]},
            )
        data = _valid(BookInput, request.data)
        ratelimit.hit(request, name="booking_user", key=ratelimit.by_user)
        consultation, created = services.consultation_book(
            patient=request.user, slot_id=data["slot"], reason=data["reason"], idempotency_key=key
        )
        audit_log(
            request=request,
            action=AuditAction.CREATE if created else AuditAction.READ,
            object_type="consultation",
            object_ids=[consultation.pk],
            patient_id=consultation.patient_id,
            organization_id=consultation.organization_id,
        )
        # A replayed request answers 200 with the booking it made the first time.
        return self.consultation_body(consultation, status_code=201 if created else 200)


class ConsultationDetailApi(ClinicApiView):
    """One consultation, with the caller's ``unread_count``."""

    @extend_schema(responses={200: ConsultationOutput})
    def get(self, request, consultation_id: int):
        consultation = selectors.consultation_get_for_user(
            user=request.user, consultation_id=consultation_id
        )
        audit_consultations(request=request, action=AuditAction.READ, consultations=[consultation])
        return self.consultation_body(consultation)


def _audit_update(request, consultation) -> None:
    audit_consultations(request=request, action=AuditAction.UPDATE, consultations=[consultation])


class ConsultationTransitionApi(ClinicApiView):
    """POST cancel / start / complete / no-show: 200 with the consultation, 409 if invalid."""

    action: str = ""

    @extend_schema(request=CompleteInput, responses={200: ConsultationOutput})
    def post(self, request, consultation_id: int):
        consultation = selectors.consultation_get_for_user(
            user=request.user, consultation_id=consultation_id
        )
        actor = request.user
        if self.action == "cancel":
            data = _valid(CancelInput, request.data)
            services.consultation_cancel(
                consultation=consultation, actor=actor, reason=data["reason"]
            )
        elif self.action == "start":
            services.consultation_start(consultation=consultation, actor=actor)
        elif self.action == "complete":
            data = _valid(CompleteInput, request.data)
            services.consultation_complete(
                consultation=consultation, actor=actor, provider_notes=data["provider_notes"]
            )
        elif self.action == "no-show":
            services.consultation_mark_no_show(consultation=consultation, actor=actor)
        else:  # pragma: no cover - wiring error
            raise ValueError(self.action)
        _audit_update(request, consultation)
        return self.consultation_body(consultation)


class ConsultationRescheduleApi(ClinicApiView):
    """POST ``{slot}``: cancel and re-book in one transaction → 201 with the new consultation."""

    @extend_schema(request=RescheduleInput, responses={201: ConsultationOutput})
    def post(self, request, consultation_id: int):
        consultation = selectors.consultation_get_for_user(
            user=request.user, consultation_id=consultation_id
        )
        data = _valid(RescheduleInput, request.data)
        if request.user.role == Role.PATIENT:
            ratelimit.hit(request, name="booking_user", key=ratelimit.by_user)
        new = services.consultation_reschedule(
            consultation=consultation, actor=request.user, slot_id=data["slot"]
        )
        audit_consultations(
            request=request, action=AuditAction.UPDATE, consultations=[consultation, new]
        )
        return self.consultation_body(new, status_code=201)


# --- Walk-in queue ------------------------------------------------------------------------


class ProviderQueueApi(ClinicApiView):
    """POST: a patient joins the provider's walk-in queue (201). GET: the waiting list, head
    first (that provider and their clinic's staff)."""

    @extend_schema(request=QueueJoinInput, responses={201: QueueEntryOutput})
    def post(self, request, provider_id: int):
        require_patient(request.user, action="join the walk-in queue")
        provider = selectors.provider_get(provider_id=provider_id)
        data = _valid(QueueJoinInput, request.data)
        entry = services.queue_join(patient=request.user, provider=provider, reason=data["reason"])
        entry = selectors.queue_entry_get_for_user(user=request.user, entry_id=entry.pk)
        estimate = selectors.queue_wait_estimator(provider=provider)
        return Response(
            QueueEntryOutput(entry, context={"estimate": estimate}).data,
            status=status.HTTP_201_CREATED,
        )

    @extend_schema(responses={200: QueueEntryOutput(many=True)})
    def get(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        paginator = _paginator(("joined_at", "id"))
        page = paginator.paginate_queryset(
            selectors.queue_waiting(provider_id=provider.pk), request, view=self
        )
        estimate = selectors.queue_wait_estimator(provider=provider)
        data = QueueEntryOutput(page, many=True, context={"estimate": estimate}).data
        return paginator.get_paginated_response(data)


class ProviderQueueNextApi(ClinicApiView):
    """POST: start a consultation with the head of the queue → 201; 409 when nobody waits."""

    @extend_schema(request=None, responses={201: ConsultationOutput})
    def post(self, request, provider_id: int):
        provider = selectors.provider_get_managed(user=request.user, provider_id=provider_id)
        consultation = services.queue_call_next(provider=provider, actor=request.user)
        audit_log(
            request=request,
            action=AuditAction.CREATE,
            object_type="consultation",
            object_ids=[consultation.pk],
            patient_id=consultation.patient_id,
            organization_id=consultation.organization_id,
        )
        return self.consultation_body(consultation, status_code=201)


class QueueEntryApi(ClinicApiView):
    """GET: position and estimated wait. DELETE: the patient leaves the queue (204)."""

    @extend_schema(responses={200: QueueEntryOutput})
    def get(self, request, entry_id: int):
        entry = selectors.queue_entry_get_for_user(user=request.user, entry_id=entry_id)
        estimate = selectors.queue_wait_estimator(provider=entry.provider)
        return Response(QueueEntryOutput(entry, context={"estimate": estimate}).data)

    @extend_schema(responses={204: None})
    def delete(self, request, entry_id: int):
        entry = selectors.queue_entry_get_for_user(user=request.user, entry_id=entry_id)
        services.queue_leave(entry=entry, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Medical records ----------------------------------------------------------------------


class PatientRecordsApi(ClinicApiView):
    """GET: the patient's record entries, newest first. POST: a treating provider or the
    clinic's staff adds an entry (or a correction, with ``supersedes``)."""

    @extend_schema(parameters=[RecordListInput], responses={200: RecordEntryOutput(many=True)})
    def get(self, request, patient_id: int):
        patient = selectors.patient_get_for_records(user=request.user, patient_id=patient_id)
        params = _valid(RecordListInput, request.query_params)
        queryset = selectors.records_for_user(
            user=request.user,
            patient=patient,
            kind=params.get("kind"),
            current_only=params["current"],
        )
        paginator = _paginator(("-id",))
        page = paginator.paginate_queryset(queryset, request, view=self)
        data = RecordEntryOutput(page, many=True).data
        audit_log(
            request=request,
            action=AuditAction.READ,
            object_type="medical_record_entry",
            object_ids=[entry.pk for entry in page] or [f"patient:{patient.pk}"],
            patient_id=patient.pk,
            organization_id=request.user.organization_id,
        )
        return paginator.get_paginated_response(data)

    @extend_schema(request=RecordInput, responses={201: RecordEntryOutput})
    def post(self, request, patient_id: int):
        patient = selectors.patient_get_for_records(user=request.user, patient_id=patient_id)
        data = _valid(RecordInput, request.data)
        entry = services.medical_record_add(
            author=request.user,
            patient=patient,
            kind=data["kind"],
            text=data["text"],
            consultation_id=data.get("consultation"),
            supersedes_id=data.get("supersedes"),
        )
        audit_log(
            request=request,
            action=AuditAction.CREATE,
            object_type="medical_record_entry",
            object_ids=[entry.pk],
            patient_id=patient.pk,
            organization_id=entry.organization_id,
        )
        return Response(RecordEntryOutput(entry).data, status=status.HTTP_201_CREATED)


# --- Dashboard ----------------------------------------------------------------------------


def _serialize_consultations(rows, *, clinician: bool) -> list[dict]:
    return ConsultationOutput(rows, many=True, context={"clinician": clinician}).data


class DashboardApi(ClinicApiView):
    """Patient: upcoming consultations, unread counts, queue places. Provider: today's schedule
    in their timezone, counts by status, queue length. Staff: the clinic's day."""

    @extend_schema(
        responses={200: OpenApiTypes.OBJECT},
        description=(
            "Shape by role. Patient: {role, upcoming: [consultation], queue: [queue entry], "
            "unread_total}. Provider: {role, date, timezone, schedule: [consultation], "
            "counts: {status: n}, queue_length}. Staff: {role, date, timezone, "
            "consultations: [consultation], counts, queue_length, queue_lengths: {provider: n}}."
        ),
    )
    def get(self, request):
        user = request.user
        tz = timezone.get_current_timezone()
        if user.role == Role.PATIENT:
            scopes = [caching.user_dashboard_scope(user.pk)]
            build = self._patient
        elif user.role == Role.PROVIDER:
            scopes = [caching.user_dashboard_scope(user.pk)]
            build = self._provider
        elif user.role == Role.STAFF and user.organization_id:
            tz = ZoneInfo(user.organization.timezone)
            scopes = [caching.organization_dashboard_scope(user.organization_id)]
            build = self._staff
        else:
            return Response({"role": user.role})
        today = timezone.now().astimezone(tz).date()
        key = f"dashboard|{user.pk}|{timezone.get_current_timezone_name()}|{tz}|{today}"
        data = caching.cached(
            scopes=scopes,
            key=key,
            timeout=conf.dashboard_cache_seconds(),
            build=lambda: build(user, tz),
        )
        listed = data.get("upcoming") or data.get("schedule") or data.get("consultations") or []
        # Unread counts change with every message: read fresh, never from the cache.
        unread = selectors.unread_counts_for(user=user, consultation_ids=[c["id"] for c in listed])
        for item in listed:
            item["unread_count"] = unread.get(item["id"], 0)
        if user.role == Role.PATIENT:
            data["unread_total"] = sum(unread.values())
        audit_consultations(request=request, action=AuditAction.READ, consultations=listed)
        return Response(data)

    @staticmethod
    def _patient(user, tz) -> dict:
        upcoming = selectors.dashboard_upcoming_for_patient(patient=user)
        queue = selectors.dashboard_queue_for_patient(patient=user)
        # One estimator per provider queued with (two queries each; a patient waits in few).
        estimators = {
            entry.provider_id: selectors.queue_wait_estimator(provider=entry.provider)
            for entry in queue
        }
        return {
            "role": "patient",
            "upcoming": _serialize_consultations(upcoming, clinician=False),
            "queue": [
                QueueEntryOutput(entry, context={"estimate": estimators[entry.provider_id]}).data
                for entry in queue
            ],
        }

    @staticmethod
    def _provider(user, tz) -> dict:
        schedule, counts = selectors.dashboard_day(scope=Q(provider_id=user.pk), tz=tz)
        lengths = selectors.queue_lengths(scope=Q(provider_id=user.pk))
        return {
            "role": "provider",
            "date": timezone.now().astimezone(tz).date().isoformat(),
            "timezone": str(tz),
            "schedule": _serialize_consultations(schedule, clinician=True),
            "counts": counts,
            "queue_length": lengths.get(user.pk, 0),
        }

    @staticmethod
    def _staff(user, tz) -> dict:
        scope = Q(organization_id=user.organization_id)
        consultations, counts = selectors.dashboard_day(scope=scope, tz=tz)
        lengths = selectors.queue_lengths(scope=scope)
        return {
            "role": "staff",
            "date": timezone.now().astimezone(tz).date().isoformat(),
            "timezone": str(tz),
            "consultations": _serialize_consultations(consultations, clinician=True),
            "counts": counts,
            "queue_length": sum(lengths.values()),
            "queue_lengths": {str(pid): n for pid, n in lengths.items()},
        }
