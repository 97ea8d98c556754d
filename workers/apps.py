from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"
    verbose_name = "Background work"

    def ready(self) -> None:
        # workers.tasks is imported here so that its tasks are registered in every process:
        # services enqueue delivery by task name (they never import workers.tasks), and a
        # registered task runs eagerly when so configured.
        from workers import metrics, tasks  # noqa: F401 - tasks: registered, see above

        metrics.register()
