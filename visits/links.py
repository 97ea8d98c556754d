"""Join links for reminder e-mails: signed, expiring, for one visit and one user.

A link carries ``{consultation id, user id, expiry, credentials stamp}`` signed with the
server's SECRET_KEY under a salt of its own (a link is no other signed value, and no other
signed value is a link). It stops working VISIT_LINK_SECONDS after the visit's scheduled
end, and when the user's password changes (the stamp no longer matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.urls import reverse
from django.utils import timezone

SALT = "medease.visits.join-link"


@dataclass(frozen=True)
class JoinLink:
    consultation_id: int
    user_id: int
    credentials_stamp: float


def join_token(*, consultation, user) -> str:
    """The signed token of a join link for this user and this visit."""
    expires = consultation.scheduled_end + timedelta(seconds=settings.VISIT_LINK_SECONDS)
    payload = {
        "c": consultation.pk,
        "u": user.pk,
        "e": int(expires.timestamp()),
        "s": user.credentials_changed_at.timestamp(),
    }
    return signing.dumps(payload, salt=SALT, compress=True)


def join_url(*, consultation, user) -> str:
    """The absolute join link (under SITE_URL) for this user and this visit."""
    token = join_token(consultation=consultation, user=user)
    return settings.SITE_URL + reverse("visit-join", kwargs={"token": token})


def join_token_read(token: str) -> JoinLink | None:
    """What an untampered, unexpired token names; None otherwise."""
    if not token or len(token) > 512:
        return None
    try:
        payload = signing.loads(token, salt=SALT)
        link = JoinLink(int(payload["c"]), int(payload["u"]), float(payload["s"]))
        expires = int(payload["e"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
    if timezone.now().timestamp() >= expires:
        return None
    return link


def reminder_extras(consultation) -> dict:
    """The patient's join link for a reminder's payload (consultations.notifications)."""
    return {"join_url": join_url(consultation=consultation, user=consultation.patient)}
