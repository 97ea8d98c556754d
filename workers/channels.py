"""Channels of delivery: how a notification leaves the building.

A channel renders a notification into a message (no I/O) and opens a session that hands
messages over. The split matters for exactly-once delivery: everything slow or fallible
that happens *before* the other side takes responsibility (rendering, connecting,
authenticating) is done before ``send``; ``send`` returns as soon as the message was
accepted, so the caller records it as sent before doing anything else (closing the
connection happens afterwards, and its errors are ignored).

Only email exists today. An SMS, push or webhook channel subclasses :class:`Channel`, adds
itself to ``NotificationChannel`` and to :data:`CHANNELS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import smtplib
import zoneinfo
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import Any, ClassVar, Protocol

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.template.loader import render_to_string
from django.utils import timezone

from workers.models import Notification, NotificationChannel

logger = logging.getLogger("medease.notifications")


class DeliveryError(Exception):
    """A message was not accepted."""


class TransientDeliveryError(DeliveryError):
    """Worth another attempt later (connection trouble, 4xx answers, timeouts)."""


class PermanentDeliveryError(DeliveryError):
    """Another attempt would fail the same way (the recipient was refused with a 5xx)."""


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered notification, ready to hand over."""

    notification_id: int
    to: str
    subject: str
    text: str
    html: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class Sender(Protocol):
    def send(self, message: OutgoingMessage) -> None:
        """Hand one message over; return only once the other side has accepted it."""


class Channel(ABC):
    """What a delivery channel implements."""

    name: ClassVar[str]

    @abstractmethod
    def render(self, *, notification: Notification) -> OutgoingMessage:
        """Build the message for this notification, in the recipient's timezone. No I/O."""

    @abstractmethod
    def open(self) -> contextlib.AbstractContextManager[Sender]:
        """Connect; the session is closed on exit, where errors no longer matter."""


def _parse_times(payload: dict[str, Any], tz: zoneinfo.ZoneInfo) -> dict[str, Any]:
    """Payload times (keys ending in _at, _start, _end) are ISO strings in UTC.

    Templates get them as aware datetimes in the recipient's timezone.
    """
    context: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, str) and key.endswith(("_at", "_start", "_end")):
            try:
                context[key] = datetime.fromisoformat(value).astimezone(tz)
                continue
            except ValueError:
                pass
        context[key] = value
    return context


def _recipient_timezone(notification: Notification) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(notification.user.timezone or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def message_id_for(notification: Notification) -> str:
    """The same Message-ID on every attempt of a notification.

    If a retry ever re-sends a message that was in fact delivered (see the at-least-once
    window in workers.services), receiving systems that deduplicate by Message-ID (Gmail,
    many MTAs) show it once.
    """
    domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2] or "medease.local"
    digest = hashlib.sha256(notification.dedupe_key.encode()).hexdigest()[:16]
    return f"<notification.{notification.pk}.{digest}@{domain}>"


class _SmtpSession:
    """One open mail connection (SMTP in production; file/locmem backends in development)."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def send(self, message: OutgoingMessage) -> None:
        email = EmailMultiAlternatives(
            subject=message.subject,
            body=message.text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[message.to],
            headers=message.headers,
            connection=self.connection,
        )
        if message.html:
            email.attach_alternative(message.html, "text/html")
        try:
            sent = self.connection.send_messages([email])
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            error = f"recipient refused: {exc.recipients}"
            if codes and all(code >= 500 for code in codes):
                raise PermanentDeliveryError(error) from exc
            raise TransientDeliveryError(error) from exc
        except smtplib.SMTPDataError as exc:
            error = f"message refused: {exc.smtp_code} {exc.smtp_error!r}"
            if exc.smtp_code >= 500:
                raise PermanentDeliveryError(error) from exc
            raise TransientDeliveryError(error) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Includes a refused sender (our configuration, not this message), timeouts
            # and dropped connections: retry later.
            raise TransientDeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if not sent:
            raise TransientDeliveryError("the mail backend accepted no message")


class EmailChannel(Channel):
    """Email with a text and an HTML part per kind: ``workers/email/<kind>.{subject,txt,html}``."""

    name = NotificationChannel.EMAIL

    def render(self, *, notification: Notification) -> OutgoingMessage:
        user = notification.user
        tz = _recipient_timezone(notification)
        context = {
            **_parse_times(notification.payload or {}, tz),
            "recipient_name": user.full_name,
            "to_patient": user.pk == (notification.payload or {}).get("patient_id"),
            "timezone_name": str(tz),
            "site_url": settings.SITE_URL,
            "kind": notification.kind,
        }
        base = f"workers/email/{notification.kind}"
        # Every date the templates print comes out in the recipient's timezone.
        with timezone.override(tz):
            subject = render_to_string(f"{base}.subject.txt", context)
            text = render_to_string(f"{base}.txt", context)
            html = render_to_string(f"{base}.html", context)
        return OutgoingMessage(
            notification_id=notification.pk,
            to=user.email,
            subject=" ".join(subject.split()),  # one line: headers cannot hold newlines
            text=text.strip() + "\n",
            html=html,
            headers={"Message-ID": message_id_for(notification)},
        )

    @contextlib.contextmanager
    def open(self) -> Iterator[Sender]:
        connection = get_connection(fail_silently=False, timeout=settings.EMAIL_TIMEOUT)
        try:
            connection.open()
        except (smtplib.SMTPException, OSError) as exc:  # timeouts are OSErrors too
            raise TransientDeliveryError(f"cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            yield _SmtpSession(connection)
        finally:
            # The message is accepted (or refused) by now: a failing QUIT changes nothing.
            try:
                connection.close()
            except Exception:  # Best effort, after the fact.
                logger.warning("closing the mail connection failed", exc_info=True)


CHANNELS: dict[str, Channel] = {NotificationChannel.EMAIL: EmailChannel()}


def channel_for(name: str) -> Channel:
    """The channel registered under ``name``."""
    try:
        return CHANNELS[name]
    except KeyError:
        raise PermanentDeliveryError(f"no delivery channel named {name!r}") from None
