"""Argon2 at the smallest cost argon2-cffi allows, for tests that create users in bulk.

The product hashes with Argon2 at Django's cost (about 0.3 s a hash on two quiet cores,
several seconds on a loaded box). The hashes made here are still ``argon2`` hashes, with
their parameters inside, so a server started by a test (which keeps the product's
PASSWORD_HASHERS) verifies them, and upgrades them to the full cost on the first login.
The accounts suite keeps the product's hashers: that is where hashing itself is tested.
"""

from __future__ import annotations

from django.contrib.auth.hashers import Argon2PasswordHasher


class FastArgon2PasswordHasher(Argon2PasswordHasher):
    time_cost = 1
    memory_cost = 8  # KiB: argon2's minimum for one lane
    parallelism = 1
