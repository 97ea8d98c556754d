"""Staff console for people and clinics, scoped to the staff member's organization."""

from __future__ import annotations

from functools import partial
from types import MethodType

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.contrib.auth.views import PasswordChangeView
from django.urls import path, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from accounts import console, mfa, services
from accounts.forms import (
    ConsoleLoginForm,
    ConsoleOwnPasswordChangeForm,
    ConsolePasswordChangeForm,
)
from accounts.models import AuthToken, Organization, PatientProfile, ProviderProfile, Role, User
from medease.admin import OrganizationScopedAdmin
from medease.audit import AuditAction, audit_log

# The console's login counts failed passwords with the API login's limits.
admin.site.login_form = ConsoleLoginForm
# ... and asks for the second factor when the account has one (accounts/console.py); every
# console page but logout and the MFA pages then needs an OTP-verified session.
admin.site.login = MethodType(console.console_login, admin.site)
_ungated_admin_view = admin.site.admin_view
admin.site.admin_view = console.gated_admin_view(_ungated_admin_view)


class _OwnPasswordChangeView(PasswordChangeView):
    form_class = ConsoleOwnPasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}


def _own_password_change(site, request, extra_context=None):
    """AdminSite.password_change with a form that goes through the accounts services."""
    request.current_app = site.name
    return _OwnPasswordChangeView.as_view(
        success_url=reverse("admin:password_change_done", current_app=site.name),
        extra_context={**site.each_context(request), **(extra_context or {})},
    )(request)


# The default site hard-codes Django's form for a user's own password change; this is the
# same view with ours (set before the site builds its URLs, which happens after admin
# modules are loaded).
admin.site.password_change = MethodType(_own_password_change, admin.site)

_site_index = admin.site.index


def _index(site, request, extra_context=None):
    """AdminSite.index, told whether the signed-in user may add an authenticator (the home
    page then links their two-factor sign-in page)."""
    context = {"mfa_can_enrol": mfa.mfa_can_enrol(user=request.user), **(extra_context or {})}
    return _site_index(request, context)


admin.site.index = MethodType(_index, admin.site)


@admin.register(Organization)
class OrganizationAdmin(OrganizationScopedAdmin):
    organization_field = "pk"
    list_display = ["name", "slug", "timezone", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser


# Other apps add inlines shown on a provider's page (consultations: availability).
provider_inlines: list = []


class ProviderProfileInline(admin.StackedInline):
    model = ProviderProfile
    can_delete = False
    extra = 0


class PatientProfileInline(admin.StackedInline):
    model = PatientProfile
    can_delete = False
    extra = 0


class UserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ["email", "full_name", "role", "organization", "timezone"]


class UserChangeAdminForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(OrganizationScopedAdmin, DjangoUserAdmin):
    form = UserChangeAdminForm
    add_form = UserCreationForm
    change_password_form = ConsolePasswordChangeForm
    ordering = ["email"]
    list_display = ["email", "full_name", "role", "organization", "is_active"]
    list_filter = ["role", "is_active"]
    list_select_related = ["organization"]
    search_fields = ["email", "full_name"]
    readonly_fields = ["date_joined", "last_login", "credentials_changed_at"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Person", {"fields": ["full_name", "role", "organization", "timezone"]}),
        (
            "Status",
            {"fields": ["is_active", "date_joined", "last_login", "credentials_changed_at"]},
        ),
    ]
    superuser_fieldsets = [
        ("Superuser", {"fields": ["is_superuser", "groups", "user_permissions"]})
    ]
    add_fieldsets = [
        (
            None,
            {
                "classes": ["wide"],
                "fields": [
                    "email",
                    "full_name",
                    "role",
                    "organization",
                    "timezone",
                    "password1",
                    "password2",
                ],
            },
        )
    ]

    actions = ["mfa_reset"]

    def get_urls(self):
        site = self.admin_site
        return [
            # The login's code step: before the login, so not behind admin_view.
            path(
                "mfa/verify/",
                never_cache(csrf_protect(partial(console.mfa_verify, site))),
                name="accounts_mfa_verify",
            ),
            path(
                "mfa/setup/",
                _ungated_admin_view(partial(console.mfa_setup, site)),
                name="accounts_mfa_setup",
            ),
            path(
                "mfa/",
                _ungated_admin_view(partial(console.mfa_overview, site)),
                name="accounts_mfa",
            ),
            *super().get_urls(),
        ]

    @admin.action(
        description="Reset two-factor sign-in (lost authenticator)", permissions=["change"]
    )
    def mfa_reset(self, request, queryset):
        reset, refused = 0, []
        for user in queryset:
            # Not one's own (that needs a code, on the MFA page), nor an administrator's
            # unless one is a superuser.
            if user.pk == request.user.pk or (
                (user.role == Role.ADMIN or user.is_superuser) and not request.user.is_superuser
            ):
                refused.append(user.email)
                continue
            mfa.mfa_reset(user=user)
            reset += 1
        self.message_user(
            request, f"Two-factor sign-in reset for {reset} user(s); their sessions ended."
        )
        if refused:
            self.message_user(
                request, f"Not reset (not allowed): {', '.join(refused)}.", level="warning"
            )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and request.user.is_superuser:
            return [*fieldsets, *self.superuser_fieldsets]
        return fieldsets

    def get_inlines(self, request, obj):
        if obj is None:
            return []
        if obj.role == Role.PROVIDER:
            return [ProviderProfileInline, *provider_inlines]
        if obj.role == Role.PATIENT:
            return [PatientProfileInline]
        return []

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # Staff cannot move people to another clinic.
            fields.append("organization")
        return fields

    def formfield_for_choice_field(self, db_field, request, **kwargs):
        if db_field.name == "role" and not request.user.is_superuser:
            # Staff manage their clinic's providers and staff; never administrators.
            kwargs["choices"] = [(Role.PROVIDER, "Provider"), (Role.STAFF, "Staff")]
        return super().formfield_for_choice_field(db_field, request, **kwargs)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        # A patient's profile is PHI: the console's views and edits of it are audited.
        user = self.get_object(request, object_id)
        if user is not None and user.role == Role.PATIENT and response.status_code in (200, 302):
            audit_log(
                request=request,
                action=AuditAction.UPDATE if request.method == "POST" else AuditAction.READ,
                object_type="patient_profile",
                object_ids=[user.pk],
                patient_id=user.pk,
                organization_id=request.user.organization_id,
            )
        return response

    def get_deleted_objects(self, objs, request):
        if objs and all(obj.role == Role.PATIENT for obj in objs):
            # A patient is anonymized, not deleted: nothing else goes, nothing protects it.
            return (
                [f"{obj} (anonymized; visits, records and audit trail kept)" for obj in objs],
                {"users": len(objs)},
                set(),
                [],
            )
        return super().get_deleted_objects(objs, request)

    def delete_model(self, request, obj):
        if obj.role == Role.PATIENT:
            services.patient_delete(patient=obj)
            audit_log(
                request=request,
                action=AuditAction.DELETE,
                object_type="patient_profile",
                object_ids=[obj.pk],
                patient_id=obj.pk,
            )
        else:
            services.user_delete(user=obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def save_model(self, request, obj, form, change):
        if not request.user.is_superuser:
            obj.organization_id = request.user.organization_id
        if change:
            # Deactivation, a role or clinic change: the service ends their sessions too.
            services.user_save_by_staff(user=obj, changed_fields=form.changed_data)
        else:
            super().save_model(request, obj, form, change)
        services.user_ensure_profile(user=obj)


@admin.register(AuthToken)
class AuthTokenAdmin(admin.ModelAdmin):
    """Superusers only: see and revoke sessions. The digest is not a usable secret.

    Tokens are never edited in place: revoking or deleting goes through the services, which
    tombstone the token cache and close the user's sockets on every node.
    """

    list_display = ["user", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_select_related = ["user"]
    search_fields = ["user__email"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_revoke_permission(self, request):
        return request.user.is_superuser

    @admin.action(description="Revoke the selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = services.tokens_revoke(tokens=queryset)
        self.message_user(request, f"{revoked} token(s) revoked.")

    def delete_model(self, request, obj):
        services.tokens_delete(tokens=AuthToken.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        services.tokens_delete(tokens=queryset)
