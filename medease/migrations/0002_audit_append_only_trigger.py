"""On PostgreSQL, a trigger refuses UPDATE and DELETE on the audit log (append-only even
for code that bypasses the model). SQLite relies on the model's guards alone."""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION medease_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'medease_auditevent is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER medease_auditevent_append_only
    BEFORE UPDATE OR DELETE ON medease_auditevent
    FOR EACH ROW EXECUTE FUNCTION medease_audit_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS medease_auditevent_append_only ON medease_auditevent;
DROP FUNCTION IF EXISTS medease_audit_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("medease", "0001_audit_event")]

    operations = [migrations.RunPython(forwards, backwards)]
