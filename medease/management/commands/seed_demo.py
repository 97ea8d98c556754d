"""Seed the demo clinic from each app's demo.py. Idempotent; refuses to run with DEBUG off."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from medease import seeding


class Command(BaseCommand):
    help = (
        "Seed the demo organization, its accounts and their data from every app's demo.py "
        "(safe to run again; touches nothing outside the demo clinic)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--force",
            action="store_true",
            help="Run even with DEBUG off (never on a production database with real data).",
        )

    def handle(self, *args, force: bool = False, **options):
        if not settings.DEBUG and not force:
            raise CommandError(
                "seed_demo creates accounts with a public password; it refuses to run with "
                "DEBUG off. Pass --force if this really is a demo or test deployment."
            )
        result = seeding.seed_all(progress=lambda line: self.stdout.write(f"  {line}"))
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: {result.created} created, {result.existing} already there."
            )
        )
        if result.logins:
            self.stdout.write(f"Log in with any of these, password '{result.login_password}':")
            for email in result.logins:
                self.stdout.write(f"  {email}")
