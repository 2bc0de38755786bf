"""The one ArgumentParser of ``cascadev``, ``cascadev eval`` and the tools: a bad option is one line.

``PROG: error: [COMMAND: ]MESSAGE`` on stderr and exit status 2, like every other bad input (no usage
dump, no traceback). Subparsers are made of the same class (argparse's ``parser_class`` defaults to
the parent's type), and a value outside ``choices=`` is worded by :func:`cascadev.rules.check_choice`,
the function the library uses for the same names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

from .errors import CascadeVError
from .rules import check_choice


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors; ``prog`` defaults to the running script's name without ``.py``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not args and kwargs.get("prog") is None:
            kwargs["prog"] = Path(sys.argv[0]).stem or "cascadev"
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        # argparse's own reports unrecognized arguments at the top level; name the subcommand as its
        # other errors do ("cascadev: error: recon: unrecognized arguments: ...").
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            self.error(f"{command + ': ' if command else ''}unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        tool, _, command = self.prog.partition(" ")  # a subparser's prog is "cascadev recon"
        sys.exit(fail(tool, f"{command + ': ' if command else ''}{message}"))

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # argparse's own wording ("invalid choice: ... (choose from ...)") would differ from the
        # library's for the same name; the option itself is named by argparse's "argument --x:" prefix.
        if action.choices is not None and value not in action.choices:
            what = action.dest.replace("_", " ") if action.option_strings else (action.metavar or action.dest)
            try:
                check_choice(value, list(action.choices), str(what).lower())
            except CascadeVError as exc:
                raise argparse.ArgumentError(action, str(exc)) from None


def fail(prog: str, error: object) -> int:
    """Say ``PROG: error: ERROR`` on stderr, the one line of every bad input, and return its exit status, 2.

    A command's ``main`` ends with ``except CascadeVError as exc: return fail("PROG", exc)``.
    """
    # One write of the whole line: processes under a launcher share one stderr (unbuffered there), and
    # print's separate write of the newline let two processes' lines run together.
    sys.stderr.write(f"{prog}: error: {error}\n")
    sys.stderr.flush()
    return 2
