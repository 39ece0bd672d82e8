"""Puts the unpacked upstream test modules on the path, skips the excluded tests, and records every outcome."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

# compat/run.py unpacks transformers' test modules here as the package `transformers_tests`.
_UPSTREAM = os.environ.get("VTC_COMPAT_UPSTREAM")
if not _UPSTREAM:
    raise pytest.UsageError("run the compat suite with `python compat/run.py` (it unpacks transformers' tests)")
sys.path.insert(0, _UPSTREAM)

from compat.exclusions import exclusion_for  # noqa: E402

_outcomes: dict[str, dict] = {}


def _case(nodeid: str) -> tuple[str, str, str] | None:
    """(family, condition, test) of a node id `.../test_upstream.py::<family>__<condition>::<test>`."""
    parts = nodeid.split("::")
    if len(parts) != 3 or "__" not in parts[1]:
        return None
    family, condition = parts[1].split("__", 1)
    return family, condition, parts[2]


def pytest_collection_modifyitems(items):
    for item in items:
        case = _case(item.nodeid)
        reason = exclusion_for(case[2], case[0], case[1]) if case else None
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"excluded: {reason}"))


def pytest_runtest_logreport(report):
    """Called in the controlling process (with xdist too): a test's outcome is its first non-passing report (a
    failing subtest fails the test)."""
    case = _case(report.nodeid)
    if case is None:
        return
    if report.when != "call" and report.passed:
        return
    family, condition, test = case
    entry = _outcomes.setdefault(report.nodeid, {"family": family, "condition": condition, "test": test,
                                                 "excluded": exclusion_for(test, family, condition) is not None})
    entry["seconds"] = round(entry.get("seconds", 0.0) + report.duration, 3)
    if entry.get("outcome", "passed") != "passed":
        return
    entry["outcome"] = report.outcome
    if report.skipped:
        entry["detail"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        entry["detail"] = crash.message if crash is not None else str(report.longrepr)[-500:]


def pytest_sessionfinish(session):
    path = os.environ.get("VTC_COMPAT_RESULTS")
    if path and not hasattr(session.config, "workerinput"):  # the controller writes; xdist workers do not
        Path(path).write_text(json.dumps(list(_outcomes.values()), indent=1))
