"""Re-analyze the consultation table after 0.5% of its rows change, not PostgreSQL's 10%.

A provider who joins gets the highest user ids, beyond the statistics of
``consultations_consultation.provider_id``; until the table is analyzed again the planner
takes the list's page query for one that stops early in a merge join and walks every user
(29 ms of PostgreSQL CPU per request instead of 5 at 1M consultations: docs/performance.md,
"Query plans at size"). With the default 10% that lasts for ~100k changed rows.
PostgreSQL only; the embedded SQLite default has no autovacuum.
"""

from django.db import migrations

TUNE = """
ALTER TABLE consultations_consultation
    SET (autovacuum_analyze_scale_factor = 0.005, autovacuum_analyze_threshold = 1000);
"""

RESET = """
ALTER TABLE consultations_consultation
    RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold);
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TUNE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(RESET)


class Migration(migrations.Migration):
    dependencies = [("consultations", "0005_active_partial_indexes")]

    operations = [migrations.RunPython(forwards, backwards)]
