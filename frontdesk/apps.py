from django.apps import AppConfig


class FrontdeskConfig(AppConfig):
    """The front desk: console pages for running a clinic day (no models of its own)."""

    name = "frontdesk"
    verbose_name = "Front desk"
