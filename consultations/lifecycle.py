"""The consultation lifecycle, declared once: its states and the actions that move between them.

Everything else is derived from the two tables below:

* ``ACTIVE_STATUSES`` (the provider's time is taken: open slots, the SQLite overlap guard, the
  patient's upcoming list, chat writability); the PostgreSQL exclusion constraint of migration
  0002 spells the same set in SQL, and a test compares the two;
* ``TREATING_STATUSES`` (who counts as a treating provider, for medical records);
* ``services.consultation_transition`` (who may, from which state, what it stamps, what it
  notifies) and its thin wrappers ``consultation_cancel`` and co.;
* the API's transition endpoints (``POST consultations/{id}/<path>``).

To add a state, add it to ``ConsultationStatus`` and ``STATES`` (plus a migration for the
choices, and one for the constraint if it is active). To add an action, add a ``Transition``
(and the timestamp/actor fields it stamps on the model); a fact that changes no status ("who
joined when"), a ``Fact``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.db import models


class ConsultationStatus(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"
    NO_SHOW = "no_show", "No-show"


@dataclass(frozen=True)
class State:
    """What a status means to the rest of the system."""

    # Takes the provider's time (no overlap allowed) and keeps the chat writable.
    active: bool
    # The provider counts as treating the patient (may open the patient's record).
    treating: bool


STATES: Mapping[str, State] = {
    ConsultationStatus.SCHEDULED: State(active=True, treating=True),
    ConsultationStatus.IN_PROGRESS: State(active=True, treating=True),
    ConsultationStatus.COMPLETED: State(active=False, treating=True),
    ConsultationStatus.CANCELLED: State(active=False, treating=False),
    ConsultationStatus.NO_SHOW: State(active=False, treating=False),
}

# Role names (accounts.models.Role values), spelled here so the table reads on its own.
PATIENT, PROVIDER, STAFF = "patient", "provider", "staff"
CLINIC = frozenset({PROVIDER, STAFF})


@dataclass(frozen=True)
class Transition:
    """One action on a consultation: from which states, by whom, to which state.

    ``roles`` may act on a consultation they can see (``Consultation.objects.visible_to``);
    the system (beat jobs) and superusers may do every action. ``stamp`` gets the time of the
    change and ``stamp_actor`` (if any) who made it; ``note_field`` receives the caller's
    free text. ``path`` is the API endpoint ``POST consultations/{id}/<path>`` served by the
    generic transition view (``None``: the action has its own endpoint). ``event`` is the
    notification sent on commit.
    """

    action: str
    sources: frozenset[str]
    target: str
    roles: frozenset[str]
    stamp: str
    verb: str
    path: str | None = None
    event: str | None = None
    stamp_actor: str | None = None
    note_field: str | None = None
    note_max_length: int | None = None
    # Patients may act only until the cancellation cut-off before the start.
    patient_cutoff: bool = False
    # Not before the scheduled start (nobody is a no-show early).
    after_start: bool = False

    @property
    def frees_or_takes_time(self) -> bool:
        """Whether the provider's open slots change (a source and the target differ in
        activity), so cached slot lists must be invalidated."""
        return any(STATES[source].active != STATES[self.target].active for source in self.sources)


_SCHEDULED = frozenset({ConsultationStatus.SCHEDULED})

TRANSITIONS: Mapping[str, Transition] = {
    t.action: t
    for t in (
        Transition(
            action="cancel",
            sources=_SCHEDULED,
            target=ConsultationStatus.CANCELLED,
            roles=CLINIC | {PATIENT},
            stamp="cancelled_at",
            stamp_actor="cancelled_by",
            note_field="cancellation_reason",
            note_max_length=200,
            verb="cancelled",
            path="cancel",
            event="consultation_cancelled",
            patient_cutoff=True,
        ),
        # Cancels this consultation and books another slot (services.consultation_reschedule);
        # its endpoint answers with the new consultation.
        Transition(
            action="reschedule",
            sources=_SCHEDULED,
            target=ConsultationStatus.CANCELLED,
            roles=CLINIC | {PATIENT},
            stamp="cancelled_at",
            stamp_actor="cancelled_by",
            note_field="cancellation_reason",
            verb="cancelled",
            patient_cutoff=True,
        ),
        Transition(
            action="start",
            sources=_SCHEDULED,
            target=ConsultationStatus.IN_PROGRESS,
            roles=CLINIC,
            stamp="started_at",
            verb="started",
            path="start",
            event="consultation_started",
        ),
        Transition(
            action="complete",
            sources=frozenset({ConsultationStatus.IN_PROGRESS}),
            target=ConsultationStatus.COMPLETED,
            roles=CLINIC,
            stamp="completed_at",
            note_field="provider_notes",
            verb="completed",
            path="complete",
        ),
        Transition(
            action="no_show",
            sources=_SCHEDULED,
            target=ConsultationStatus.NO_SHOW,
            roles=CLINIC,
            stamp="no_show_at",
            verb="marked as a no-show",
            path="no-show",
            event="no_show_marked",
            after_start=True,
        ),
        # The video visit's no-show: the provider joined the call (which started the
        # consultation) but the patient never did (FACTS "joined"). Never from a visit the
        # patient joined. Taken by the visit's job (end + VISIT_NO_SHOW_GRACE_MINUTES) or the
        # clinic; served by services.consultation_mark_visit_no_show.
        Transition(
            action="visit_no_show",
            sources=frozenset({ConsultationStatus.IN_PROGRESS}),
            target=ConsultationStatus.NO_SHOW,
            roles=CLINIC,
            stamp="no_show_at",
            verb="marked as a no-show",
            event="no_show_marked",
            after_start=True,
        ),
    )
}


# Facts: moments recorded on a consultation without changing its status, by role of the
# user they are about. The video visit (visits/) stamps ``joined`` the first time each side
# joins the call (a conditional UPDATE on the still-empty field, so only the first counts);
# the provider's first join also takes the ``start`` transition above. The no-show job of
# the visit reads them: a patient who never joined is a patient no-show, a provider who never
# joined is reported to the clinic and the patient, never counted against the patient.
@dataclass(frozen=True)
class Fact:
    """A moment in a consultation's life that is recorded, not a change of status."""

    name: str
    # Role -> the timestamp field stamped for a user of that role (once: the first time).
    stamps: Mapping[str, str]
    # The statuses in which the fact may still be recorded.
    while_in: frozenset[str]


FACTS: Mapping[str, Fact] = {
    f.name: f
    for f in (
        Fact(
            name="joined",
            stamps={PATIENT: "patient_joined_at", PROVIDER: "provider_joined_at"},
            while_in=frozenset({ConsultationStatus.SCHEDULED, ConsultationStatus.IN_PROGRESS}),
        ),
        # The front desk marks a booked patient as arrived (services.consultation_check_in,
        # with ``checked_in_by``); undone the same day only. It changes no status: the visit
        # is still started by the provider.
        Fact(
            name="checked_in",
            stamps={STAFF: "checked_in_at", PROVIDER: "checked_in_at"},
            while_in=_SCHEDULED,
        ),
    )
}

ACTIVE_STATUSES: tuple[str, ...] = tuple(s for s, state in STATES.items() if state.active)
TREATING_STATUSES: tuple[str, ...] = tuple(s for s, state in STATES.items() if state.treating)
# The actions served by the generic endpoint, by URL segment.
API_TRANSITIONS: Mapping[str, Transition] = {t.path: t for t in TRANSITIONS.values() if t.path}


def actions_for_role(role: str) -> list[str]:
    """The actions a role may take (on consultations it can see), in table order."""
    return [t.action for t in TRANSITIONS.values() if role in t.roles]


def is_active(status: str) -> bool:
    """Whether a consultation in this status takes its provider's time (and its chat is open)."""
    return STATES[status].active


# Told after commit that a consultation left the active statuses (completed, cancelled,
# no-show): how a higher app (the video visit ends its call) follows the lifecycle without
# consultations importing it. Each gets the consultation id; it must not raise.
ClosedListener = Callable[[int], None]
_closed_listeners: list[ClosedListener] = []


def on_closed(listener: ClosedListener) -> None:
    """Call ``listener(consultation_id)`` after commit whenever a consultation closes."""
    if listener not in _closed_listeners:
        _closed_listeners.append(listener)


def closed_listeners() -> tuple[ClosedListener, ...]:
    """The registered listeners (the transition service calls them on commit)."""
    return tuple(_closed_listeners)
