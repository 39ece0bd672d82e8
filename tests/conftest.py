"""Shared test settings."""

from hypothesis import settings

# Deterministic and without per-example deadlines: CI machines vary in speed, and a failure must reproduce exactly.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=50)
settings.load_profile("ci")
