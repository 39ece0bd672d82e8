"""Run transformers' own model tests (`ModelTesterMixin`) on vtc-compressed models of every family.

    python compat/run.py                      # every family, the four conditions, 2 pytest workers
    python compat/run.py --families llava qwen2_vl --workers 0

For the installed transformers it fetches the release's source distribution (pip; cached), unpacks the common
model-test module next to our stand-ins for the two test modules the distribution lacks, and runs pytest on
compat/test_upstream.py. It then prints a table (family x condition: passed / failed / skipped) and checks the
requirement: no test that passes unpatched fails (or stops passing) with all components off, with LVTC ratio 1, or
with a warm PVTC ratio 1. Exit status 1 names every such test, or an exclusion that matches no test.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))

from compat.conditions import CONDITIONS  # noqa: E402
from compat.exclusions import EXCLUDED, matches  # noqa: E402
from compat.families import FAMILIES  # noqa: E402
from compat.upstream import fetch_sdist, unpack_common_tests  # noqa: E402

_BASELINE = "unpatched"
_DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vtc" / "compat"


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers; 0 runs in this process")
    parser.add_argument("--sdist", type=Path, help="a transformers source distribution to use instead of fetching")
    parser.add_argument("--cache", type=Path, default=_DEFAULT_CACHE, help="where fetched distributions are kept")
    parser.add_argument("--results", type=Path, help="also write every test's outcome here (JSON)")
    parser.add_argument("--verbose", action="store_true", help="show pytest's own output")
    args = parser.parse_args(argv)
    if _BASELINE not in args.conditions:
        parser.error(f"--conditions must include {_BASELINE}: the requirement compares against it")
    return args


def _run_pytest(args: argparse.Namespace, upstream: Path, results: Path) -> None:
    env = dict(os.environ, VTC_COMPAT_UPSTREAM=str(upstream), VTC_COMPAT_RESULTS=str(results),
               VTC_COMPAT_FAMILIES=",".join(args.families), VTC_COMPAT_CONDITIONS=",".join(args.conditions))
    command = [sys.executable, "-m", "pytest", "-c", str(_ROOT / "compat" / "pytest.ini"), "--rootdir",
               str(_ROOT / "compat"), str(_ROOT / "compat"), "-q", "--tb=no", "--no-header"]
    if args.workers:
        command += ["-n", str(args.workers)]
    # pytest's own exit status is not the verdict (tests that fail unpatched too are allowed); its output is shown
    # when asked for, or when it produced no results.
    run = subprocess.run(command, env=env, cwd=_ROOT, check=False, text=True,
                         stdout=None if args.verbose else subprocess.PIPE, stderr=subprocess.STDOUT)
    if not results.is_file():
        print(run.stdout or "", end="")
        raise SystemExit("compat: pytest wrote no results (its output is above)")


def _table(outcomes: list[dict], families: list[str], conditions: list[str]) -> str:
    counts = Counter((o["family"], o["condition"], o["outcome"]) for o in outcomes)
    excluded = Counter((o["family"], o["condition"]) for o in outcomes if o["excluded"])
    lines = ["| family | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
    for family in families:
        cells = [f"{counts[family, c, 'passed']} / {counts[family, c, 'failed']} / {counts[family, c, 'skipped']} "
                 f"({excluded[family, c]} excl.)" for c in conditions]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _regressions(outcomes: list[dict]) -> list[dict]:
    """Compressed outcomes of tests that pass unpatched and do not pass compressed (excluded ones aside)."""
    passed = {(o["family"], o["test"]) for o in outcomes if o["condition"] == _BASELINE and o["outcome"] == "passed"}
    return [o for o in outcomes if o["condition"] != _BASELINE and (o["family"], o["test"]) in passed
            and o["outcome"] != "passed" and not o["excluded"]]


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if importlib.util.find_spec("parameterized") is None:
        raise SystemExit("compat: transformers' test module needs `parameterized`: pip install parameterized")
    import transformers

    version = transformers.__version__
    started = time.monotonic()
    archive = args.sdist or fetch_sdist(version, args.cache)
    with tempfile.TemporaryDirectory(prefix="vtc-compat-") as temp:
        upstream = unpack_common_tests(archive, Path(temp) / "upstream")
        results = Path(temp) / "results.json"
        _run_pytest(args, upstream, results)
        outcomes = json.loads(results.read_text())
    if args.results:
        args.results.write_text(json.dumps(outcomes, indent=1))

    print(f"\ntransformers {version} ({archive.name}): passed / failed / skipped per family and condition, "
          f"in {time.monotonic() - started:.0f} s")
    print(_table(outcomes, args.families, args.conditions))
    status = 0
    tests = {o["test"] for o in outcomes}
    stale = [name for name in EXCLUDED if not any(matches(name, test) for test in tests)]
    if stale:
        print(f"\nexclusions that match no upstream test of transformers {version}: {', '.join(stale)}")
        status = 1
    regressions = _regressions(outcomes)
    for o in sorted(regressions, key=lambda o: (o["family"], o["condition"], o["test"])):
        print(f"REGRESSION {o['family']} {o['condition']} {o['test']}: {o['outcome']}: {o.get('detail', '')[:300]}")
    if regressions:
        print(f"\n{len(regressions)} tests pass unpatched and not compressed")
        status = 1
    else:
        print("\nno test that passes unpatched fails compressed")
    return status


if __name__ == "__main__":
    sys.exit(main())
