"""Peak memory of a command and every process it starts, sampled from /proc (Linux).

``ru_maxrss`` cannot be used for this: Linux carries a process's high-water mark across
``fork`` and ``exec``, so a child started from a large benchmark process reports the parent's
size. Here the resident sizes of the command and all its descendants are summed every 20 ms.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (OSError, ValueError):
                pass
    return out


def run_measured(cmd: list[str]) -> tuple[str, float]:
    """(stdout, peak MB of the process tree) of ``cmd``, which must succeed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, sum(_rss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed:\n{err[-2000:]}")
    return out, peak / 1024
