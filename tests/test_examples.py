"""Every script in examples/ runs and shows what it says it shows.

The scripts that only use vtc run in this process, with small arguments; `custom_adapter.py` registers an adapter,
which would outlive it in the registry, so it runs in a process of its own.
"""

import re
import runpy
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *argv: str):
    """`main(argv)` of `examples/{name}.py` (`main()` when no arguments are given), and what it returned."""
    main = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]
    return main(list(argv)) if argv else main()


def test_every_example_is_tested():
    source = Path(__file__).read_text()
    untested = [path.name for path in EXAMPLES.glob("*.py")
                if f'run_example("{path.stem}"' not in source and f'"{path.name}"' not in source]
    assert untested == []


def test_quickstart(capsys):
    run_example("quickstart")
    out = capsys.readouterr().out
    native = int(re.search(r"^uncompressed: '.*' with (\d+) visual tokens", out, re.M).group(1))
    compressed = int(re.search(r"^compressed: +'.*' with (\d+) visual tokens", out, re.M).group(1))
    assert compressed * 4 == native
    assert "tokens per decoder layer" in out and "unpatched:" in out


def test_ratio_sweep(capsys):
    rows = run_example("ratio_sweep", "--samples", "4", "--ratios", "4")
    by_name = {row["config"]: row for row in rows}
    assert list(by_name) == ["none", "pvtc x4", "lvtc x4"]
    assert by_name["pvtc x4"]["visual_tokens"] * 4 == by_name["none"]["visual_tokens"]
    assert by_name["lvtc x4"]["visual_tokens"] == by_name["none"]["visual_tokens"]  # LVTC acts inside the decoder
    assert by_name["lvtc x4"]["prefill_flops"] < by_name["none"]["prefill_flops"]
    assert all(0 <= row["accuracy"] <= 1 for row in rows)
    assert "pvtc x4" in capsys.readouterr().out


def test_train_compressor(capsys):
    run_example("train_compressor", "--steps", "2")
    out = capsys.readouterr().out
    assert "all under vtc_ names: True" in out
    assert "trained 2 steps" in out
    assert "logits equal the trained model's: True" in out


def test_custom_adapter():
    done = subprocess.run([sys.executable, str(EXAMPLES / "custom_adapter.py")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "adapter", "pvtc ratio=1", "pvtc ratio=4 + lvtc ratio=4", "generate", "unpatch"]
    assert "visual tokens per sample [20, 20] (native [80, 80])" in done.stdout
