"""Video visits: the call of a consultation and who was in it when (docs/api.md, "Video visits").

Media never touches MedEase; these rows are the call's state, which the signaling relay and
the consultation's facts (``consultations.lifecycle.FACTS``) are decided from.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from consultations.models import Consultation


class CallStatus(models.TextChoices):
    WAITING = "waiting", "Waiting (one side in)"
    ACTIVE = "active", "Active (patient and provider in)"
    ENDED = "ended", "Ended"


class CallQuerySet(models.QuerySet):
    def visible_to(self, user) -> CallQuerySet:
        """Calls of the consultations ``user`` may see (``Consultation.objects.visible_to``)."""
        return self.filter(consultation__in=Consultation.objects.visible_to(user).values("pk"))


class Call(models.Model):
    """The video call of one consultation, created by the first join."""

    # One-to-one: two first joins at once meet at this unique index (get_or_create retries
    # the read), so a consultation never gets two calls.
    consultation = models.OneToOneField(Consultation, on_delete=models.CASCADE, related_name="call")
    status = models.CharField(max_length=8, choices=CallStatus.choices, default=CallStatus.WAITING)
    created_at = models.DateTimeField(default=now, editable=False)
    # The first time patient and provider were both in; None until then.
    started_at = models.DateTimeField(null=True, blank=True)
    # When it last ended (everyone left, or the consultation ended); cleared by a rejoin.
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = CallQuerySet.as_manager()

    def __str__(self) -> str:
        return f"Call of consultation {self.consultation_id} ({self.status})"


class CallParticipant(models.Model):
    """One stay of a user in a call: a rejoin after leaving is a new row."""

    call = models.ForeignKey(Call, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="call_stays"
    )
    joined_at = models.DateTimeField(default=now)
    left_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["joined_at", "id"]
        constraints = [
            # A user is in a call at most once at a time (a second tab joins the same stay).
            models.UniqueConstraint(
                fields=["call", "user"],
                condition=Q(left_at__isnull=True),
                name="visits_one_open_stay_per_user",
            ),
        ]

    def __str__(self) -> str:
        return f"User {self.user_id} in call {self.call_id}"
