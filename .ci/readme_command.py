"""Print the shell command of the code block that follows `<!-- test-command -->` in README.md."""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_command(text: str) -> str:
    match = re.search(r"<!-- test-command -->\s*```bash\n(.+?)\n```", text, re.S)
    if match is None:
        sys.exit("README.md has no ```bash block after <!-- test-command -->")
    return match.group(1).strip()


if __name__ == "__main__":
    print(test_command(README.read_text()))
