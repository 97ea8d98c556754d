"""Deprecated: apps seed their own demo data in <app>/demo.py (see medease/seeding.py).

Kept only until consultations/apps.py stops registering into it; nothing reads this list.
"""

extra_seeders: list = []


def seed_demo(*, context) -> None:
    """Nothing: plumbing has no demo data."""
