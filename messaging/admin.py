"""Chat messages are not in the staff console on purpose: they are PHI, read through the
caller-scoped, audited API (and the admin has no per-organization scoping for them)."""
