from django.apps import AppConfig


class MessagingConfig(AppConfig):
    name = "messaging"
    verbose_name = "Messaging"

    def ready(self) -> None:
        from accounts.services import on_credentials_revoked
        from messaging.services import user_sockets_close

        # Logout, password change, deactivation: close the user's open sockets everywhere.
        on_credentials_revoked(user_sockets_close)
