from django.apps import AppConfig


class VisitsConfig(AppConfig):
    name = "visits"
    verbose_name = "Video visits"

    def ready(self) -> None:
        from consultations import lifecycle, notifications
        from visits import links, services
        from workers.relevance import register_relevance_check

        # A consultation that closes ends its call (everyone still in is let go).
        lifecycle.on_closed(services.call_end_for_closed_consultation)
        # A provider-absent report is dropped if the provider joined late after all.
        register_relevance_check(
            kinds=[services.PROVIDER_ABSENT], check=services.provider_absent_still_true
        )
        # Reminder e-mails carry the patient's join link to the visit page.
        notifications.reminder_extras_register(links.reminder_extras)
