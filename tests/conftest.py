"""Shared test settings."""

import os

import pytest
import torch
from hypothesis import settings

# Deterministic and without per-example deadlines: CI machines vary in speed, and a failure must reproduce exactly.
settings.register_profile("ci", deadline=None, derandomize=True, max_examples=50)
settings.load_profile("ci")

# Under pytest-xdist every worker is a process of its own: one intra-op thread each, so that the workers share the
# cores instead of oversubscribing them (and the thread tests still interleave their requests).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


class _RefusedCall:
    """Stands in for a function that must not run: records the attempt, then raises."""

    def __init__(self, target: str, attempts: list[str]):
        self.target, self.attempts = target, attempts

    def __call__(self, *args, **kwargs):
        self.attempts.append(self.target)
        raise RuntimeError(f"{self.target} was called")


@pytest.fixture
def refuse_calls(monkeypatch):
    """`refuse_calls(*dotted_targets)` replaces each target by a call that records itself and raises; returns the
    list of the targets called (what "nothing was built" tests assert empty)."""
    attempts: list[str] = []

    def install(*targets: str) -> list[str]:
        for target in targets:
            monkeypatch.setattr(target, _RefusedCall(target, attempts))
        return attempts

    return install
