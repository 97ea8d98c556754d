"""PostgreSQL-only guards (SQLite relies on the partial unique index and the model guards).

1. ``consultations_provider_no_overlap``: an exclusion constraint so a provider never has two
   overlapping active (scheduled or in-progress) consultations, whatever slots they come
   from. Needs ``btree_gist`` for the ``provider_id WITH =`` part (a trusted extension
   since PostgreSQL 13, so the migrating role can create it without being a superuser).
2. A trigger that refuses UPDATE and DELETE on medical record entries: a record is never
   rewritten or removed, even by code that bypasses the model; corrections supersede.
"""

from django.db import migrations

CREATE = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
ALTER TABLE consultations_consultation
    ADD CONSTRAINT consultations_provider_no_overlap
    EXCLUDE USING gist (
        provider_id WITH =,
        tstzrange(scheduled_start, scheduled_end, '[)') WITH &&
    )
    WHERE (status IN ('scheduled', 'in_progress'));

CREATE OR REPLACE FUNCTION consultations_record_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'consultations_medicalrecordentry is append-only (write a correction)';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER consultations_medicalrecordentry_immutable
    BEFORE UPDATE OR DELETE ON consultations_medicalrecordentry
    FOR EACH ROW EXECUTE FUNCTION consultations_record_immutable();
"""

DROP = """
DROP TRIGGER IF EXISTS consultations_medicalrecordentry_immutable
    ON consultations_medicalrecordentry;
DROP FUNCTION IF EXISTS consultations_record_immutable();
ALTER TABLE consultations_consultation DROP CONSTRAINT IF EXISTS consultations_provider_no_overlap;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("consultations", "0001_initial")]

    operations = [migrations.RunPython(forwards, backwards)]
