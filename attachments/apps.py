from django.apps import AppConfig


class AttachmentsConfig(AppConfig):
    name = "attachments"
    verbose_name = "Attachments"

    def ready(self) -> None:
        # Record entries take files through consultations' hooks: consultations sits below
        # attachments and never imports it.
        from attachments import records

        records.register()
