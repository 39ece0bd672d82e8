"""Shared test settings."""

import os

import torch
from hypothesis import settings

# Deterministic and without per-example deadlines: CI machines vary in speed, and a failure must reproduce exactly.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=50)
settings.load_profile("ci")

# Under pytest-xdist every worker is a process of its own: one intra-op thread each, so that the workers share the
# cores instead of oversubscribing them (and the thread tests still interleave their requests).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
