"""The demo-data runner behind ``manage.py seed_demo``, which knows no domain app.

Each installed app that has demo data ships a ``<app>/demo.py`` with a
``seed_demo(*, context: SeedContext) -> None`` function. They run in INSTALLED_APPS order,
all in one transaction, and each must be idempotent and touch only the demo data it (or an
earlier seeder) made: a database that also holds real clinics is left as it was. A seeder
hands what later ones need through :meth:`SeedContext.provide`, and takes what earlier ones
made with :meth:`SeedContext.require`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils.module_loading import module_has_submodule

SEEDER_MODULE = "demo"
SEEDER_FUNCTION = "seed_demo"


@dataclass
class SeedContext:
    """What one seed_demo run has made so far, shared by the apps' seeders in order."""

    progress: Callable[[str], None] = lambda line: None
    created: int = 0
    existing: int = 0
    # Accounts a person can log in with, and their shared demo password.
    logins: list[str] = field(default_factory=list)
    login_password: str = ""
    _values: dict[str, Any] = field(default_factory=dict)

    def provide(self, name: str, value: Any) -> None:
        self._values[name] = value

    def require(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise LookupError(
                f"no demo seeder provided {name!r}: the app that makes it must come earlier "
                "in INSTALLED_APPS"
            ) from None


def seeders() -> list[tuple[str, Callable[..., None]]]:
    """(app label, seed_demo function) of every installed app with a demo module, in order."""
    found = []
    for app_config in apps.get_app_configs():
        if not module_has_submodule(app_config.module, SEEDER_MODULE):
            continue
        module = import_module(f"{app_config.name}.{SEEDER_MODULE}")
        seed_demo = getattr(module, SEEDER_FUNCTION, None)
        if not callable(seed_demo):
            raise ImproperlyConfigured(
                f"{module.__name__} has no {SEEDER_FUNCTION}(*, context) function."
            )
        found.append((app_config.label, seed_demo))
    return found


def seed_all(*, progress: Callable[[str], None] = lambda line: None) -> SeedContext:
    """Run every app's demo seeder, in one transaction, and return what they reported."""
    context = SeedContext()
    with transaction.atomic():
        for label, seed_demo in seeders():
            progress(f"{label}:")
            context.progress = lambda line: progress(f"  {line}")
            seed_demo(context=context)
    context.progress = progress
    return context
