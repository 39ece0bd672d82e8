"""transformers' common model-test module, from the source distribution of the installed release.

The distribution ships `tests/test_modeling_common.py` but not the two test modules it imports
(`tests/exporters/test_export.py`, `tests/generation/test_utils.py`); small stand-ins of ours (compat/stubs/) take
their place. Nothing of upstream's is kept in this repository: the distribution is fetched from the package index at
run time (pip) and unpacked into a temporary folder.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

__all__ = ["PACKAGE", "fetch_sdist", "unpack_common_tests"]

#: The import name of the unpacked tests (their own imports are relative, so any package name works).
PACKAGE = "transformers_tests"
_STUBS = Path(__file__).parent / "stubs"


def fetch_sdist(version: str, cache: Path) -> Path:
    """The source distribution of transformers `version` in `cache`, downloaded with pip unless already there."""
    archive = cache / f"transformers-{version}.tar.gz"
    if not archive.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={version}", "--dest", str(cache)], check=True)
    if not archive.is_file():
        raise FileNotFoundError(f"pip did not leave {archive.name} in {cache}")
    return archive


def unpack_common_tests(archive: Path, destination: Path) -> Path:
    """Unpack the archive's `tests/test_modeling_common.py`, with our stand-ins beside it, as the package `PACKAGE`
    under `destination`; return `destination` (the folder to put on `sys.path`)."""
    package = destination / PACKAGE
    package.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/tests/test_modeling_common.py")
                       and m.name.count("/") == 2), None)
        if member is None:
            raise FileNotFoundError(f"{archive.name} has no tests/test_modeling_common.py")
        (package / "test_modeling_common.py").write_bytes(tar.extractfile(member).read())
    (package / "__init__.py").write_text("")
    for stub in ("exporters", "generation"):
        shutil.copytree(_STUBS / stub, package / stub)
    return destination
