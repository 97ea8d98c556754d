"""Cache invalidation for the providers list.

Providers change through the accounts services and through the staff console (whose
ModelAdmin saves bypass services), so model signals are the one hook that sees them all.
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.models import Organization, ProviderProfile, Role, User
from consultations import caching


@receiver([post_save, post_delete], sender=ProviderProfile)
@receiver([post_save, post_delete], sender=Organization)
def _provider_listing_changed(sender, **kwargs) -> None:
    caching.invalidate_providers_on_commit()


@receiver([post_save, post_delete], sender=User)
def _provider_user_changed(sender, instance: User, **kwargs) -> None:
    # Only providers appear in the list (a role change away from provider counts too,
    # but it also touches the profile, which is handled above).
    if instance.role == Role.PROVIDER:
        caching.invalidate_providers_on_commit()
