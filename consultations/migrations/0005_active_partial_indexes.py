# Partial indexes of the active consultations (scheduled, in progress): at a million rows the
# open-slot overlap check and a patient's upcoming list stop intersecting every active row of
# the network with the provider's or patient's whole history (docs/performance.md, "Query plans
# at size").

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_patientprofile_registered_by"),
        ("consultations", "0004_desk_checkin_queue_removal"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddIndex(
            model_name="consultation",
            index=models.Index(
                condition=models.Q(("status__in", ("scheduled", "in_progress"))),
                fields=["provider", "scheduled_start"],
                name="cons_provider_active_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="consultation",
            index=models.Index(
                condition=models.Q(("status__in", ("scheduled", "in_progress"))),
                fields=["patient", "scheduled_end"],
                name="cons_patient_active_end_idx",
            ),
        ),
    ]
