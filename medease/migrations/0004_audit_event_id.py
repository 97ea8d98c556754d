"""AuditEvent.event_id: the idempotency key of the stream write path (ADR 0007).

Added without a default first, so existing rows keep NULL (several NULLs do not collide
under UNIQUE) and nothing UPDATEs the append-only table; the default that new rows get
is Python's, set in the second step, which changes nothing in the database.
"""

import uuid

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("medease", "0003_audit_ids_outlive_rows")]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="event_id",
            field=models.UUIDField(editable=False, null=True, unique=True),
        ),
        migrations.AlterField(
            model_name="auditevent",
            name="event_id",
            field=models.UUIDField(default=uuid.uuid4, editable=False, null=True, unique=True),
        ),
    ]
