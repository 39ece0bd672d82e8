"""`benchmarks/gpu_suite.sh`: its time limit skips what it leaves no room for, and every benchmark command it runs
has arguments that fit together."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_suite_skips_what_its_time_limit_leaves_no_room_for(tmp_path):
    """`benchmarks/gpu_suite.sh` within a 15-second limit: every step is listed as skipped, none starts, and the
    log says when the run ended (a step needs at least 20 s)."""
    for part, steps in (("real", ["gpu_tests", "real_size_llava", "real_size_qwen2_vl"]),
                        ("extra", ["lvtc_host_work", "lvtc_speed", "host_overhead", "decode_anatomy", "decode_speed", "pool_kernels",
                                  "compile_speed"]),
                        ("gaps", ["first_sight", "first_sight_avoid_recompile", "lvtc_host_work", "real_size_batch1",
                                  "real_size_decode", "compile_speed"]),
                        ("prune", ["prune_speed", "prune_speed_7b"])):
        out = tmp_path / part
        subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "15", part], check=True,
                       capture_output=True, timeout=120)
        log = (out / "steps.txt").read_text()
        assert [line.split("]")[0][1:] for line in log.splitlines() if line.startswith("[")] == steps
        assert all(f"[{step}] skipped" in log for step in steps) and "done in" in log
        assert sorted(p.name for p in out.iterdir()) == ["steps.txt"]  # no step ran, so no step log


def _suite_commands(script: str) -> list[list[str]]:
    """The arguments of each `python benchmarks/SCRIPT.py ...` command in `gpu_suite.sh`."""
    text = (ROOT / "benchmarks" / "gpu_suite.sh").read_text().replace("\\\n", " ")
    text = re.sub(r"\$\(\([^)]*\)\)", "200", text).replace("$family", "llava")  # the shell's arithmetic, its loop
    commands = []
    for line in text.splitlines():
        words = line.split()
        for i, word in enumerate(words):
            if word == f"benchmarks/{script}.py":
                commands.append([w.strip('"').replace("$out", "OUT") for w in words[i + 1:]])
    return commands


def test_every_compile_speed_and_real_size_command_of_the_gpu_suite_is_valid(import_benchmark):
    """A step whose arguments do not fit together fails only on the GPU machine, minutes into its time (one run's
    compile_speed asked for LVTC layers a 4-layer decoder does not have): they are checked here."""
    compile_speed, real_size = import_benchmark("compile_speed"), import_benchmark("real_size")
    compile_commands, real_size_commands = _suite_commands("compile_speed"), _suite_commands("real_size")
    assert len(compile_commands) >= 2 and len(real_size_commands) >= 3
    for argv in compile_commands:
        args = compile_speed.parse_args(argv)
        assert args.device == "cuda" and args.text_layers >= 1, argv
    for argv in real_size_commands:
        assert real_size.main([*argv, "--plan"])["plan"], argv
    with pytest.raises(SystemExit):  # the check itself: the invalid combination of that run
        compile_speed.parse_args(["--text-layers", "4"])
