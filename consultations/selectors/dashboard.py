"""The dashboard: each role's view of its day, assembled here and cached per user (or per
clinic for staff); the view only audits and answers. Dates and times are rendered in the
active timezone (the API activates the caller's)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from accounts.models import Role, User
from consultations import caching
from consultations.lifecycle import ACTIVE_STATUSES
from consultations.models import Consultation, ConsultationStatus, QueueEntry, QueueStatus
from consultations.selectors.consultations import consultations_for_user, unread_counts_for
from consultations.selectors.providers import provider_today_bounds
from consultations.selectors.queue import queue_entries_with_position, queue_wait_estimators
from consultations.serializers import QueueEntryOutput, consultation_rows, consultation_values


def dashboard_for_user(*, user: User) -> dict:
    """The caller's dashboard body (shape by role, see ``DashboardApi``).

    The assembled part is cached; unread counts change with every message, so they are read
    fresh and merged in on every call.
    """
    tz = timezone.get_current_timezone()
    if user.role == Role.PATIENT:
        scopes, build = [caching.user_dashboard_scope(user.pk)], _patient
    elif user.role == Role.PROVIDER:
        scopes, build = [caching.user_dashboard_scope(user.pk)], _provider
    elif user.role == Role.STAFF and user.organization_id:
        tz = ZoneInfo(user.organization.timezone)
        scopes, build = [caching.organization_dashboard_scope(user.organization_id)], _staff
    else:
        return {"role": user.role}
    today = timezone.now().astimezone(tz).date()
    key = f"dashboard|{user.pk}|{timezone.get_current_timezone_name()}|{tz}|{today}"
    data = caching.cached(
        scopes=scopes,
        key=key,
        timeout=settings.DASHBOARD_CACHE_SECONDS,
        build=lambda: build(user, tz),
    )
    listed = dashboard_consultations(data)
    unread = unread_counts_for(user=user, consultation_ids=[c["id"] for c in listed])
    for item in listed:
        item["unread_count"] = unread.get(item["id"], 0)
    if user.role == Role.PATIENT:
        data["unread_total"] = sum(unread.values())
    return data


def dashboard_consultations(data: dict) -> list[dict]:
    """The consultations a dashboard body lists (whatever the role)."""
    return data.get("upcoming") or data.get("schedule") or data.get("consultations") or []


def _serialize_consultations(rows, *, clinician: bool) -> list[dict]:
    return consultation_rows([consultation_values(row) for row in rows], clinician=clinician)


def _patient(user: User, tz: ZoneInfo) -> dict:
    upcoming = dashboard_upcoming_for_patient(user=user)
    queue = dashboard_queue_for_patient(user=user)
    # Every queue's estimate in two queries, however many queues the patient waits in.
    estimators = queue_wait_estimators(
        providers=list({e.provider_id: e.provider for e in queue}.values())
    )
    return {
        "role": "patient",
        "upcoming": _serialize_consultations(upcoming, clinician=False),
        "queue": [
            QueueEntryOutput(entry, context={"estimate": estimators[entry.provider_id]}).data
            for entry in queue
        ],
    }


def _provider(user: User, tz: ZoneInfo) -> dict:
    schedule, counts = dashboard_day(user=user, tz=tz)
    lengths = queue_lengths(user=user)
    return {
        "role": "provider",
        "date": timezone.now().astimezone(tz).date().isoformat(),
        "timezone": str(tz),
        "schedule": _serialize_consultations(schedule, clinician=True),
        "counts": counts,
        "queue_length": lengths.get(user.pk, 0),
    }


def _staff(user: User, tz: ZoneInfo) -> dict:
    consultations, counts = dashboard_day(user=user, tz=tz)
    lengths = queue_lengths(user=user)
    return {
        "role": "staff",
        "date": timezone.now().astimezone(tz).date().isoformat(),
        "timezone": str(tz),
        "consultations": _serialize_consultations(consultations, clinician=True),
        "counts": counts,
        "queue_length": sum(lengths.values()),
        "queue_lengths": {str(pid): n for pid, n in lengths.items()},
    }


def dashboard_upcoming_for_patient(*, user: User, limit: int = 10) -> list[Consultation]:
    """The patient's next active consultations, soonest first."""
    return list(
        consultations_for_user(user=user)
        .filter(status__in=ACTIVE_STATUSES, scheduled_end__gte=timezone.now())
        .order_by("scheduled_start", "id")[:limit]
    )


def dashboard_queue_for_patient(*, user: User) -> list[QueueEntry]:
    """The walk-in queues the patient is waiting in, with their position."""
    return list(
        queue_entries_with_position()
        .visible_to(user)
        .filter(patient=user, status=QueueStatus.WAITING)
        .select_related("provider__provider_profile")
        .order_by("joined_at", "id")[:10]
    )


def dashboard_day(
    *, user: User, tz: ZoneInfo, limit: int = 200
) -> tuple[list[Consultation], dict[str, int]]:
    """The user's consultations of a local day (a provider's own, staff their clinic's) and
    their counts by status."""
    start, end = provider_today_bounds(tz=tz)
    day = Consultation.objects.visible_to(user).filter(
        scheduled_start__gte=start, scheduled_start__lt=end
    )
    rows = list(day.select_related("patient", "provider").order_by("scheduled_start", "id")[:limit])
    counts = dict.fromkeys(ConsultationStatus.values, 0)
    for row in day.order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return rows, counts


def queue_lengths(*, user: User) -> dict[int, int]:
    """Waiting entries per provider, of the queues the user may see."""
    return {
        row["provider_id"]: row["n"]
        for row in QueueEntry.objects.visible_to(user)
        .filter(status=QueueStatus.WAITING)
        .order_by()
        .values("provider_id")
        .annotate(n=Count("id"))
    }
