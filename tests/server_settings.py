"""Settings of the servers and workers that tests start as processes: the product's
(config.settings, read from the same environment), except that new passwords are hashed
with Argon2 at its minimum cost (tests/hashers.py). Registrations and logins made their
Argon2 hashes at the product's cost, which took seconds each on the shared CI box; no test
of a started server is about the cost of a hash (tests/accounts/ tests hashing itself).
Hashes made at the product's cost still verify: the product's hashers follow."""

from config.settings import *  # noqa: F403
from config.settings import PASSWORD_HASHERS as PRODUCT_PASSWORD_HASHERS

PASSWORD_HASHERS = ["tests.hashers.FastArgon2PasswordHasher", *PRODUCT_PASSWORD_HASHERS]
