"""``python -m cascadev.launcher accelerate launch ...``: launch.sh's run of ``accelerate launch``, with
the processes' own error lines and exit status in place of the launcher's traceback.

A cascadev process that fails says why in one line (``cascadev: error: ...``) and exits with 2. The
launcher then adds its own report of the same failure: accelerate's ``CalledProcessError`` traceback for
one process, torchrun's ``ChildFailedError`` traceback and summary for several, 20 to 50 lines that end
in exit status 1. This wrapper passes the launcher's standard error through as it comes (progress bars
included), holds it back from the first traceback on, and then exits with the failed processes' status.
A failure of the launcher's own (no process reported one) is kept to its last line. With CASCADEV_DEBUG
set, when the processes print their own tracebacks, everything passes through.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable

TRACEBACK = "Traceback (most recent call last):"
# torchrun's summary ("exitcode  : 2 (pid: ...)") and accelerate's single-process CalledProcessError.
PROCESS_STATUS = re.compile(r"exitcode\s*:\s*(-?\d+)|returned non-zero exit status (-?\d+)")


class _Filter:
    """Text in, text out up to the first traceback; what follows is kept in ``held`` (all of it goes
    through with ``hold=False``)."""

    def __init__(self, write: Callable[[str], object], hold: bool = True) -> None:
        self.write, self.tail, self.held, self.hold = write, "", None, hold

    def feed(self, text: str) -> None:
        if not self.hold:
            self.write(text)
            return
        if self.held is not None:
            self.held.append(text)
            return
        text = self.tail + text
        at = text.find(TRACEBACK)
        if at >= 0:
            self.write(text[:at])
            self.tail, self.held = "", [text[at:]]
            return
        # The marker may straddle two reads: keep back what could be its beginning.
        cut = max(0, len(text) - len(TRACEBACK) + 1)
        self.write(text[:cut])
        self.tail = text[cut:]

    def close(self) -> str:
        """What was held back (empty when no traceback came); the rest is written."""
        if self.held is None:
            self.write(self.tail)
            return ""
        return "".join(self.held)


def _shell_status(status: int) -> int:
    """A status as the shell reports it: killed by signal N -> 128 + N."""
    return 128 - status if status < 0 else status


def exit_status(launcher_status: int, held: str) -> tuple[int, str]:
    """The command's exit status, and what to print of the launcher's held-back traceback ``held``."""
    if launcher_status == 0:
        return 0, held  # a traceback some process printed and survived: not the launcher's, so all of it
    # torchrun lists every failed process, the ones it stopped itself (SIGTERM, -15) among them, and then
    # the first to fail under "Root Cause": that one's status is the run's.
    root = held.rfind("Root Cause")
    failed = [int(a or b) for a, b in PROCESS_STATUS.findall(held[max(root, 0) :]) if int(a or b) != 0]
    if failed:  # the processes failed and said why above: their status, nothing more
        return _shell_status(failed[0]), ""
    last = next((line.strip() for line in reversed(held.splitlines()) if line.strip()), None)
    return _shell_status(launcher_status), "" if last is None else f"launch.sh: error: {last}\n"


def main(argv: list[str] | None = None) -> int:
    cmd = list(sys.argv[1:] if argv is None else argv)
    if not cmd:
        print("usage: python -m cascadev.launcher ACCELERATE launch [ARGS...]", file=sys.stderr)
        return 2
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    # Ctrl-C reaches the launcher and its processes directly (one process group), and they stop in their
    # own way (a checkpoint first): this wrapper reads on until they are done. Set after the launcher
    # started, which so keeps Python's own handling. A SIGTERM to this wrapper (a job scheduler's) goes on
    # to the launcher, which stops its processes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # With CASCADEV_DEBUG the processes print their own tracebacks: nothing is held back then.
    out = _Filter(lambda text: (sys.stderr.write(text), sys.stderr.flush()), hold=not os.environ.get("CASCADEV_DEBUG"))
    while data := os.read(proc.stderr.fileno(), 1 << 16):
        out.feed(decoder.decode(data))
    out.feed(decoder.decode(b"", final=True))
    status, text = exit_status(proc.wait(), out.close())
    sys.stderr.write(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
