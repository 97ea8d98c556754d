from django.urls import path

from accounts import api

urlpatterns = [
    path("auth/register", api.RegisterApi.as_view(), name="auth-register"),
    path("auth/login", api.LoginApi.as_view(), name="auth-login"),
    path("auth/login/mfa", api.LoginMfaApi.as_view(), name="auth-login-mfa"),
    path("auth/logout", api.LogoutApi.as_view(), name="auth-logout"),
    path("auth/mfa", api.MfaStatusApi.as_view(), name="auth-mfa"),
    path("auth/mfa/totp", api.TotpApi.as_view(), name="auth-mfa-totp"),
    path("auth/mfa/totp/confirm", api.TotpConfirmApi.as_view(), name="auth-mfa-totp-confirm"),
    path("auth/mfa/recovery-codes", api.RecoveryCodesApi.as_view(), name="auth-mfa-recovery"),
    path("auth/password", api.PasswordChangeApi.as_view(), name="auth-password"),
    path("me", api.MeApi.as_view(), name="me"),
]
