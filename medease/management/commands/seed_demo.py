"""Create the demo clinic and its accounts. Idempotent; refuses to run with DEBUG off."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from medease import demo

DEMO_PASSWORD = demo.DEMO_PASSWORD


class Command(BaseCommand):
    help = "Seed the demo organization, staff, providers and patients (safe to run again)."

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
        result = demo.seed(progress=lambda line: self.stdout.write(f"  {line}"))
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: {result.created} created, {result.existing} already there."
            )
        )
        self.stdout.write(f"Log in with any of these, password '{DEMO_PASSWORD}':")
        for email in result.emails:
            self.stdout.write(f"  {email}")
