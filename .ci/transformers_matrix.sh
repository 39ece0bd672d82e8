#!/usr/bin/env bash
# The adapter, component, pruning and op tests, and transformers' own model tests on compressed models (compat/run.py), on
# every older transformers minor release that pyproject.toml declares, each in a virtual environment of its own on top
# of the one the README's test command set up (it ran the whole suite on the newest release). A failure on any
# release fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
for minor in $(python .ci/transformers_versions.py --older); do
    env="$(mktemp -d)/transformers-${minor}"
    python -m venv --system-site-packages "$env"
    "$env/bin/pip" install -q "transformers==${minor}.*"
    echo "+ transformers $("$env/bin/python" -c 'import transformers; print(transformers.__version__)'):" \
         "python -m pytest -q -n auto tests/adapters tests/vtc tests/prune tests/ops"
    "$env/bin/python" -m pytest -q -n auto -p no:cacheprovider tests/adapters tests/vtc tests/prune tests/ops
    "$env/bin/python" compat/run.py
done
