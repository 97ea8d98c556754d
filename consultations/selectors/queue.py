"""The walk-in queue: positions, who may see an entry, estimated waits."""

from __future__ import annotations

import statistics
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Window
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone

from accounts.models import User
from consultations.models import Consultation, ConsultationStatus, QueueEntry, QueueStatus
from medease.exceptions import NotFound


def _position_subquery() -> Subquery:
    """How many waiting entries of the same provider are ahead of this one, plus one."""
    ahead = (
        QueueEntry.objects.filter(provider_id=OuterRef("provider_id"), status=QueueStatus.WAITING)
        .filter(
            Q(joined_at__lt=OuterRef("joined_at"))
            | Q(joined_at=OuterRef("joined_at"), id__lt=OuterRef("id"))
        )
        .order_by()
        .values("provider_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return Coalesce(Subquery(ahead, output_field=IntegerField()), 0) + 1


def queue_entries_with_position() -> QuerySet[QueueEntry]:
    """Queue entries annotated with ``position`` (meaningful while waiting), in one query."""
    return QueueEntry.objects.annotate(position=_position_subquery())


def queue_entry_get_for_user(*, user: User, entry_id: int) -> QueueEntry:
    """A queue entry the user may see (the patient; the provider or their clinic's staff)."""
    entry = (
        queue_entries_with_position()
        .visible_to(user)
        .filter(pk=entry_id)
        .select_related("provider__provider_profile")
        .first()
    )
    if entry is None:
        raise NotFound("Queue entry not found.")
    return entry


def queue_waiting(*, provider_id: int) -> QuerySet[QueueEntry]:
    """The provider's waiting entries, head first (callers scope the provider first)."""
    return (
        queue_entries_with_position()
        .filter(provider_id=provider_id, status=QueueStatus.WAITING)
        .select_related("patient")
    )


def queue_typical_minutes(*, provider: User) -> float:
    """Median length of the provider's recent consultations, or their configured length."""
    since = timezone.now() - timedelta(days=settings.QUEUE_WAIT_HISTORY_DAYS)
    rows = list(
        Consultation.objects.filter(
            provider=provider,
            status=ConsultationStatus.COMPLETED,
            started_at__isnull=False,
            completed_at__gte=since,
        )
        .order_by("-completed_at")
        .values_list("started_at", "completed_at")[: settings.QUEUE_WAIT_HISTORY]
    )
    durations = [(done - begun).total_seconds() / 60 for begun, done in rows if done > begun]
    if not durations:
        return float(provider.provider_profile.consultation_minutes)
    return statistics.median(durations)


def queue_current_remaining_minutes(*, provider: User, typical: float) -> float:
    """Expected minutes left of the provider's consultation in progress (0 when free)."""
    started = (
        Consultation.objects.filter(provider=provider, status=ConsultationStatus.IN_PROGRESS)
        .order_by("-started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    if started is None:
        return 0.0
    elapsed = (timezone.now() - started).total_seconds() / 60
    return max(0.0, typical - elapsed)


def _estimator(*, typical: float, current: float):
    def estimate(position: int | None) -> int | None:
        if position is None:
            return None
        return round((position - 1) * typical + current)

    return estimate


def queue_wait_estimator(*, provider: User):
    """A function position → estimated wait in minutes (two queries, whatever the count)."""
    typical = queue_typical_minutes(provider=provider)
    current = queue_current_remaining_minutes(provider=provider, typical=typical)
    return _estimator(typical=typical, current=current)


def queue_wait_estimators(*, providers: list[User]) -> dict[int, object]:
    """:func:`queue_wait_estimator` of several providers at once, in two queries (a patient
    waiting in several queues). Each provider's ``provider_profile`` should be selected."""
    if not providers:
        return {}
    ids = [provider.pk for provider in providers]
    since = timezone.now() - timedelta(days=settings.QUEUE_WAIT_HISTORY_DAYS)
    recent = (
        Consultation.objects.filter(
            provider_id__in=ids,
            status=ConsultationStatus.COMPLETED,
            started_at__isnull=False,
            completed_at__gte=since,
        )
        .annotate(
            recency=Window(
                RowNumber(), partition_by=[F("provider_id")], order_by=F("completed_at").desc()
            )
        )
        .filter(recency__lte=settings.QUEUE_WAIT_HISTORY)
        .values_list("provider_id", "started_at", "completed_at")
    )
    durations: dict[int, list[float]] = {pk: [] for pk in ids}
    for provider_id, begun, done in recent:
        if done > begun:
            durations[provider_id].append((done - begun).total_seconds() / 60)
    # Oldest first, so each provider's latest visit in progress is the one the dict keeps
    # (portable: SQLite has no DISTINCT ON; a provider rarely has more than one).
    started = dict(
        Consultation.objects.filter(provider_id__in=ids, status=ConsultationStatus.IN_PROGRESS)
        .order_by("started_at", "id")
        .values_list("provider_id", "started_at")
    )
    now = timezone.now()
    estimators = {}
    for provider in providers:
        own = durations[provider.pk]
        typical = (
            statistics.median(own) if own else float(provider.provider_profile.consultation_minutes)
        )
        begun = started.get(provider.pk)
        current = 0.0 if begun is None else max(0.0, typical - (now - begun).total_seconds() / 60)
        estimators[provider.pk] = _estimator(typical=typical, current=current)
    return estimators
