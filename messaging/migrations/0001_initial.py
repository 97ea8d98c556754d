# Chat tables. On PostgreSQL ``messaging_message`` is range-partitioned by month on
# created_at (see messaging/models.py for why the keys look the way they do); elsewhere
# (SQLite, the embedded default) it is the plain table Django would create.

import datetime

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def _month_start(day: datetime.date) -> datetime.date:
    return day.replace(day=1)


def _next_month(first: datetime.date) -> datetime.date:
    return (first + datetime.timedelta(days=32)).replace(day=1)


class CreatePartitionedMessage(migrations.CreateModel):
    """CreateModel for Message whose PostgreSQL table is partitioned (state is unchanged).

    Frozen here on purpose: later changes to messaging/partitions.py must not change what
    this migration did.
    """

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        model = to_state.apps.get_model(app_label, self.name)
        table = model._meta.db_table
        consultations = to_state.apps.get_model("consultations", "Consultation")._meta.db_table
        users = to_state.apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
        # PostgreSQL 15 has no identity columns on partitioned tables: one sequence owned by
        # the column gives ids that are unique and increasing across all partitions.
        schema_editor.execute(f'CREATE SEQUENCE "{table}_id_seq" AS bigint')
        schema_editor.execute(
            f"""
            CREATE TABLE "{table}" (
                "id" bigint NOT NULL DEFAULT nextval('"{table}_id_seq"'),
                "body" text NOT NULL,
                "client_id" varchar(64) NOT NULL,
                "created_at" timestamp with time zone NOT NULL,
                "edited_at" timestamp with time zone NULL,
                "deleted_at" timestamp with time zone NULL,
                "consultation_id" bigint NOT NULL
                    CONSTRAINT "{table}_consultation_id_fk"
                    REFERENCES "{consultations}" ("id") DEFERRABLE INITIALLY DEFERRED,
                "sender_id" bigint NOT NULL
                    CONSTRAINT "{table}_sender_id_fk"
                    REFERENCES "{users}" ("id") DEFERRABLE INITIALLY DEFERRED,
                -- The partition key must be part of the primary key.
                CONSTRAINT "{table}_pkey" PRIMARY KEY ("id", "created_at")
            ) PARTITION BY RANGE ("created_at")
            """
        )
        schema_editor.execute(f'ALTER SEQUENCE "{table}_id_seq" OWNED BY "{table}"."id"')
        schema_editor.execute(
            f'CREATE INDEX "messaging_msg_consult_id_idx" ON "{table}" ("consultation_id", "id")'
        )
        # The current and the next month; the beat job (messaging.ensure_partitions) keeps
        # MESSAGING_PARTITION_MONTHS_AHEAD months ready from then on.
        first = _month_start(datetime.datetime.now(datetime.UTC).date())
        for _ in range(2):
            following = _next_month(first)
            schema_editor.execute(
                f'CREATE TABLE IF NOT EXISTS "{table}_p{first:%Y_%m}" PARTITION OF "{table}" '
                f"FOR VALUES FROM ('{first.isoformat()} 00:00:00+00') "
                f"TO ('{following.isoformat()} 00:00:00+00')"
            )
            first = following

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor != "postgresql":
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        table = from_state.apps.get_model(app_label, self.name)._meta.db_table
        # Dropping the parent drops its partitions and the owned sequence.
        schema_editor.execute(f'DROP TABLE "{table}" CASCADE')


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("consultations", "0002_postgres_guards"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        CreatePartitionedMessage(
            name="Message",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("body", models.TextField(max_length=10000)),
                ("client_id", models.CharField(max_length=64)),
                (
                    "created_at",
                    models.DateTimeField(default=django.utils.timezone.now, editable=False),
                ),
                ("edited_at", models.DateTimeField(blank=True, null=True)),
                ("deleted_at", models.DateTimeField(blank=True, null=True)),
                (
                    "consultation",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="messages",
                        to="consultations.consultation",
                    ),
                ),
                (
                    "sender",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["id"],
                "indexes": [
                    models.Index(fields=["consultation", "id"], name="messaging_msg_consult_id_idx")
                ],
            },
        ),
        migrations.CreateModel(
            name="MessageClientId",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("client_id", models.CharField(max_length=64)),
                ("message_id", models.BigIntegerField()),
                ("message_created_at", models.DateTimeField()),
                (
                    "sender",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("sender", "client_id"), name="messaging_client_id_once_per_sender"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="ReadMarker",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("last_read_message_id", models.BigIntegerField(default=0)),
                ("read_at", models.DateTimeField(blank=True, null=True)),
                ("notified_at", models.DateTimeField(blank=True, null=True)),
                (
                    "consultation",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="consultations.consultation",
                    ),
                ),
                (
                    "user",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("consultation", "user"), name="messaging_readmarker_once"
                    )
                ],
            },
        ),
    ]
