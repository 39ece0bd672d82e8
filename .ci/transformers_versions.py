"""Print the transformers minor releases that pyproject.toml declares (`transformers>=A.B,<C.D`), oldest first.

`--newest` prints the newest only: `.ci/run` installs it and runs the README's test command (the whole suite) on it,
as a fresh install resolves it. `--older` prints the others: `.ci/transformers_matrix.sh` runs the adapter, component
and op tests on each.
"""

import re
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def supported_minors(text: str) -> list[str]:
    match = re.search(r'"transformers>=(\d+)\.(\d+),<(\d+)\.(\d+)"', text)
    if match is None:
        sys.exit('pyproject.toml declares no "transformers>=A.B,<C.D" dependency')
    major, low, end_major, end = map(int, match.groups())
    if end_major != major or end <= low:
        sys.exit(f"the transformers range {match.group(0)} must span minors of one major release")
    return [f"{major}.{minor}" for minor in range(low, end)]


if __name__ == "__main__":
    minors = supported_minors(PYPROJECT.read_text())
    if "--newest" in sys.argv[1:]:
        minors = minors[-1:]
    elif "--older" in sys.argv[1:]:
        minors = minors[:-1]
    print(" ".join(minors))
