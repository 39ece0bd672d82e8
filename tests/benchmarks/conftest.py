"""What the benchmark tests share: the scripts of `benchmarks/`, imported as modules."""

import importlib
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def import_benchmark():
    """`import_benchmark(name)` imports the script `benchmarks/<name>.py` as a module (the scripts import their
    neighbours, so the folder goes on `sys.path` for the session). Session-scoped: hypothesis tests may use it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
        yield importlib.import_module
