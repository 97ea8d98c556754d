"""Chat: messages of a consultation, their idempotency keys, and per-user read markers.

``Message`` on PostgreSQL is a table range-partitioned by month on ``created_at`` (the
migration creates the parent and the first partitions, ``messaging.tasks`` keeps partitions
ahead). PostgreSQL requires the partition key in every unique constraint and in the primary
key, so there:

* the real primary key is ``(id, created_at)``; ``id`` comes from one sequence shared by all
  partitions, so it is unique and increasing in practice, and Django keeps treating ``id`` as
  the primary key (nothing but the sequence writes it);
* no foreign key points at ``Message`` (a key would have to include ``created_at``): read
  markers keep a plain message id;
* "``client_id`` unique per sender" cannot be a constraint on the partitioned table (it would
  only be unique within a month), so it lives in the small, unpartitioned
  ``MessageClientId`` table, written in the same transaction as the message.

On SQLite ``Message`` is a plain table with the same columns.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.timezone import now

from consultations.models import Consultation

MAX_BODY_LENGTH = 10_000
MAX_CLIENT_ID_LENGTH = 64


class MessageQuerySet(models.QuerySet):
    def visible_to(self, user) -> MessageQuerySet:
        """Messages of the consultations ``user`` may see (``Consultation.objects.visible_to``)."""
        return self.filter(consultation_id__in=Consultation.objects.visible_to(user).values("pk"))


class Message(models.Model):
    """One chat message in a consultation; ordered by ``id``, which only grows."""

    consultation = models.ForeignKey(
        "consultations.Consultation",
        on_delete=models.PROTECT,
        related_name="messages",
        # Covered by the (consultation, id) index below.
        db_index=False,
    )
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        # Users are never hard-deleted, and no read filters on the sender alone: an index
        # would only cost every insert.
        db_index=False,
    )
    body = models.TextField(max_length=MAX_BODY_LENGTH)
    # The sender's idempotency key; unique per sender through MessageClientId.
    client_id = models.CharField(max_length=MAX_CLIENT_ID_LENGTH)
    # The partition key on PostgreSQL.
    created_at = models.DateTimeField(default=now, editable=False)
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    objects = MessageQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [
            # History pages, replay after an id and unread counts all walk this index.
            models.Index(fields=["consultation", "id"], name="messaging_msg_consult_id_idx"),
        ]

    def __str__(self) -> str:
        return f"Message {self.pk} in consultation {self.consultation_id}"


class MessageClientId(models.Model):
    """The idempotency record of one sent message: (sender, client_id) → message, once."""

    # Indexed by the unique (sender, client_id) constraint.
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    client_id = models.CharField(max_length=MAX_CLIENT_ID_LENGTH)
    # Plain columns, not a foreign key: Message is partitioned (see the module docstring).
    # created_at lets the lookup of the message prune partitions.
    message_id = models.BigIntegerField()
    message_created_at = models.DateTimeField()

    class Meta:
        constraints = [
            # Two concurrent sends with the same key: the database lets exactly one in.
            models.UniqueConstraint(
                fields=["sender", "client_id"], name="messaging_client_id_once_per_sender"
            ),
        ]

    def __str__(self) -> str:
        return f"client_id {self.client_id!r} of user {self.sender_id}"


class ReadMarker(models.Model):
    """How far one user has read one consultation's chat; only ever moves forward."""

    consultation = models.ForeignKey(
        "consultations.Consultation", on_delete=models.CASCADE, related_name="+", db_index=False
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    # The highest message id the user has read (0: nothing yet). A plain id, see above.
    last_read_message_id = models.BigIntegerField(default=0)
    # When the marker last moved; a new idle period for offline notifications starts then.
    read_at = models.DateTimeField(null=True, blank=True)
    # When the user was last notified of unread messages here (offline participants).
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consultation", "user"], name="messaging_readmarker_once"
            ),
        ]

    def __str__(self) -> str:
        return f"User {self.user_id} read consultation {self.consultation_id} up to " + str(
            self.last_read_message_id
        )
