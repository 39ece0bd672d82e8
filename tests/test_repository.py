"""The README, CI and packaging agree with each other."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_readme_command():
    spec = importlib.util.spec_from_file_location("readme_command", ROOT / ".ci" / "readme_command.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.test_command((ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    command = load_readme_command()
    assert "pytest" in command and 'pip install -e ".[test]"' in command
    assert "torch==2.13.0" in command  # the CPU build, never an unpinned torch
    ci = (ROOT / ".ci" / "run").read_text()
    assert "readme_command.py" in ci and 'bash -euo pipefail -c "${command}"' in ci


def test_readme_main_command_installs_and_runs_ablate():
    text = (ROOT / "README.md").read_text()
    assert 'python -c "import torch" 2>/dev/null || pip install torch==2.13.0; pip install -e . && vtc ablate' in text


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "vtc.cli", "info"], capture_output=True, text=True, check=True)
    assert "supported model types" in out.stdout


def test_the_declared_transformers_range_is_the_adapters_tested_range_and_ci_tests_every_release_of_it():
    from vtc.adapters.base import Adapter

    spec = importlib.util.spec_from_file_location("transformers_versions", ROOT / ".ci" / "transformers_versions.py")
    versions = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(versions)
    minors = versions.supported_minors((ROOT / "pyproject.toml").read_text())
    assert Adapter.min_transformers == f"{minors[0]}.0"
    last_major, last_minor = map(int, minors[-1].split("."))
    assert Adapter.max_transformers == f"{last_major}.{last_minor + 1}.0"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "transformers_versions.py --newest" in ci and "bash .ci/transformers_matrix.sh" in ci
    assert "transformers_versions.py --older" in (ROOT / ".ci" / "transformers_matrix.sh").read_text()
