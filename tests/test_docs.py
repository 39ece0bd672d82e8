"""Every code example of the README and of docs/ runs as written: per page, in order, in an empty directory, after
the page's `vtc make-tiny` commands. A block that cannot run offline (a hub checkpoint, a GPU) is written as ```bash."""

import re
import shlex
import textwrap
from pathlib import Path

import pytest

from vtc.cli import main as vtc_command

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")  # [text](target) or [text](target#anchor)


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of one language, in order; blocks indented inside list items are dedented."""
    return [textwrap.dedent(block) for block in re.findall(rf"^ *```{language}\n(.*?)^ *```", text, flags=re.S | re.M)]


def make_tiny_commands(text: str) -> list[str]:
    return [
        line.strip()
        for block in code_blocks(text, "bash")
        for line in block.splitlines()
        if line.strip().startswith("vtc make-tiny ")
    ]


def run_page(text: str, name: str, blocks: int | None = None) -> dict:
    """Run the page's `vtc make-tiny` commands, then its first `blocks` Python blocks (all by default) in one
    namespace; returns the namespace."""
    for command in make_tiny_commands(text):
        assert vtc_command(shlex.split(command)[1:]) == 0, command
    namespace: dict = {"__name__": "__main__"}
    for index, block in enumerate(code_blocks(text, "python")[:blocks]):
        exec(compile(block, f"{name} python block {index}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_python_block_runs_in_order(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(page.read_text(), page.name)


def test_the_readme_quickstart_makes_one_checkpoint_and_compresses_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text()
    assert len(make_tiny_commands(text)) == 1
    namespace = run_page(text, "README.md", blocks=1)
    assert namespace["vtc"].is_compressed(namespace["model"])


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(page):
    targets = [target for target in LINK.findall(page.read_text()) if "://" not in target]
    assert [target for target in targets if not (page.parent / target).exists()] == []
