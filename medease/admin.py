"""Admin helpers: organization scoping for clinic staff in the console."""

from __future__ import annotations

from django.contrib import admin


class OrganizationScopedAdmin(admin.ModelAdmin):
    """Non-superusers see and edit only rows of their own organization.

    ``organization_field`` is the lookup path from the model to its organization id.
    """

    organization_field = "organization"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{self.organization_field: request.user.organization_id})
