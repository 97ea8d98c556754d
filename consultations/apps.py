from django.apps import AppConfig


class ConsultationsConfig(AppConfig):
    name = "consultations"
    verbose_name = "Consultations"

    def ready(self) -> None:
        from consultations import signals  # noqa: F401 - cache invalidation receivers
        from consultations.demo import seed_demo
        from medease import demo

        # seed_demo gives the demo providers availability, slots and some history.
        if seed_demo not in demo.extra_seeders:
            demo.extra_seeders.append(seed_demo)
