"""``python -m scratchlm ...``, also as each rank of ``torchrun ... -m scratchlm ...``.

Under torchrun every rank writes to the one terminal, and when a rank fails the others report
only that their connection to it closed (gloo's "Connection closed by peer"). So each line a
rank writes to stderr starts with ``[rankN]: `` (torch's own label for an uncaught exception's
traceback), and the line that says why a rank stopped says which rank it was. That rank then
exits non-zero, and torchrun stops the others.
"""

import os
import re
import sys


class RankLabelled:
    """A text stream that starts each line with ``label``. Left as written: a write that starts
    with a carriage return (a progress bar redrawing its line) and a line torch has labelled."""

    def __init__(self, stream, label: str):
        self.stream, self.label = stream, label
        self.at_line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in re.findall(r"[^\n]*\n|[^\n]+", text):  # lines, each with its "\n"
            if self.at_line_start and not piece.startswith(("\r", self.label)):
                out.append(self.label)
            out.append(piece)
            self.at_line_start = piece.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding: the stream's
        return getattr(self.stream, name)


def _label_ranks() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stderr = RankLabelled(sys.stderr, f"[rank{os.environ.get('RANK', '?')}]: ")


if __name__ == "__main__":
    from scratchlm.cli import main

    _label_ranks()
    raise SystemExit(main())
