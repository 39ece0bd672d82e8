"""docs/lmms.md runs as written: its Python blocks in order, then its ```python lmms-eval blocks (tests/test_docs.py
runs the former in the main environment, which has no lmms-eval), in one namespace, in an empty directory."""

import re
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed here; .ci/run runs tests/lmms in an environment "
                                        "that has it (.ci/lmms.sh)")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "lmms.md"


def blocks(text: str, info: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"^ *```{info}\n(.*?)^ *```", text, flags=re.S | re.M)]


def test_the_page_runs_with_lmms_eval(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in ("HF_DATASETS_CACHE", "LMMS_EVAL_DATASETS_CACHE"):
        monkeypatch.setenv(key, str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    text = PAGE.read_text()
    lmms_blocks = blocks(text, "python lmms-eval")
    assert lmms_blocks, "docs/lmms.md has no ```python lmms-eval block"
    namespace: dict = {"__name__": "__main__"}
    for index, block in enumerate(blocks(text, "python") + lmms_blocks):
        exec(compile(block, f"docs/lmms.md block {index}", "exec"), namespace)
    assert namespace["lm"].costs()["vtc_majority_colour"]["visual_tokens"] == 9
