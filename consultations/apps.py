from django.apps import AppConfig


class ConsultationsConfig(AppConfig):
    name = "consultations"
    verbose_name = "Consultations"

    def ready(self) -> None:
        from consultations import (
            notifications,
            signals,  # noqa: F401 - cache invalidation receivers
        )

        # Reminders and confirmations held back (quiet hours, retries) are skipped at
        # delivery once their consultation was cancelled or moved.
        notifications.register_relevance_checks()
