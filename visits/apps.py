from django.apps import AppConfig


class VisitsConfig(AppConfig):
    name = "visits"
    verbose_name = "Video visits"

    def ready(self) -> None:
        from consultations import lifecycle
        from visits.services import call_end_for_closed_consultation

        # A consultation that closes ends its call (everyone still in is let go).
        lifecycle.on_closed(call_end_for_closed_consultation)
