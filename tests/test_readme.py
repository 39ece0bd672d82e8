"""Every code snippet of the README runs as written, in order, against the local tiny checkpoint it makes."""

import re
import shlex
from pathlib import Path

import vtc.cli

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("vtc make-tiny")]
    assert len(make_tiny) == 1
    assert vtc.cli.main(shlex.split(make_tiny[0])[1:]) == 0

    snippets = [re.sub(r"^  ", "", block, flags=re.M) for block in blocks("python")]  # blocks inside list items
    assert len(snippets) >= 5
    namespace: dict = {}
    for index, snippet in enumerate(snippets):
        exec(compile(snippet, f"README.md python block {index}", "exec"), namespace)
    assert namespace["vtc"].is_compressed(namespace["model"])
