#!/usr/bin/env bash
# The lmms-eval plugin's tests (tests/lmms/), in a virtual environment of their own on top of the one the README's
# test command set up (where they skip: it has no lmms-eval). lmms-eval's declared dependencies include torchvision,
# whose PyPI wheel is built for the CUDA torch and does not import next to the CPU torch, so the environment gets
# vtc's `lmms-core` extra (what lmms-eval's evaluation path imports, without torchvision) and lmms-eval without its
# dependencies, as docs/lmms.md tells CPU users to. Installing vtc in it registers the `lmms_eval.models` entry point
# there; torch and transformers are the outer environment's.
set -euo pipefail
cd "$(dirname "$0")/.."
lmms_eval="$(python3 -c 'import re; print(re.search(r"\"(lmms-eval[^\"]*)\"", open("pyproject.toml").read())[1])')"
env="$(mktemp -d)/lmms"
python -m venv --system-site-packages "$env"
"$env/bin/pip" install -q -e ".[lmms-core]"
"$env/bin/pip" install -q --no-deps "${lmms_eval}"
echo "+ lmms-eval $("$env/bin/python" -c 'import importlib.metadata as m; print(m.version("lmms-eval"))'):" \
     "python -m pytest -q tests/lmms"
"$env/bin/python" -m pytest -q -p no:cacheprovider tests/lmms
