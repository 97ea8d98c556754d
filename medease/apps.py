from django.apps import AppConfig


class MedeaseConfig(AppConfig):
    name = "medease"
    verbose_name = "MedEase infrastructure"
