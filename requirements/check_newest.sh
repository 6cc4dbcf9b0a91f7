#!/usr/bin/env bash
# Would the newest releases break us? Installs the newest version of every dependency that
# pyproject.toml admits (no lock) into a throwaway virtual environment, then runs the quick tests
# there. Not part of CI: run it before a release, or when a dependency has a new version, and
# relock (requirements/lock.sh) once it passes.
#   bash requirements/check_newest.sh [PYTEST ARGS]
# torch stays at requirements/torch.txt: a new torch is its own upgrade (CPU vs CUDA builds,
# GBs), decided apart. Prints the versions that differ from the lock, then pytest's verdict.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
py="$tmp/venv/bin/python"
"$py" -m pip install -q -r requirements/uv.txt --require-hashes --no-deps
"$py" -m pip install -q -r requirements/torch.txt
"$py" -m uv pip install --python "$py" -q --upgrade -e ".[test,demo]" \
    -r requirements/model.txt
echo "check_newest: versions that differ from the lock (a resolver may take an older release"
echo "of one package to have the newest of another):"
"$py" -m uv pip freeze --python "$py" | "$py" -c '
import re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
locked = {}  # one package may be locked at several versions, by Python version (markers)
for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)",
                                open("requirements/test.txt").read(), re.M):
    locked.setdefault(norm(name), set()).add(version)
for line in sys.stdin:
    name, _, version = line.strip().partition("==")
    if version and norm(name) in locked and version not in locked[norm(name)]:
        print(f"  {name} {' / '.join(sorted(locked[norm(name)]))} -> {version}")
'
SCRATCHLM_MIRROR=${SCRATCHLM_MIRROR:-$( [ -d ../shared/data ] && cd ../shared/data && pwd )} \
    "$py" -m pytest -q -p no:cacheprovider "$@"
