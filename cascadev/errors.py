"""The one exception type that reaches users as a one-line message."""


class CascadeVError(Exception):
    """A problem with the user's input (file, option, checkpoint) rather than a bug.

    The command line prints ``cascadev: error: <message>`` and exits with status 2; the message is
    one sentence that names the offending file or option and, where possible, what to do about it.
    """


class Interrupted(Exception):
    """A run stopped by a signal after saving its state: ``cascadev: <message>``, exit status 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def first_line(exc: BaseException, limit: int = 200) -> str:
    """Another library's exception, for a one-line message: its type and the first line of its text (at
    most ``limit`` characters), or the type alone when it has no text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


def warn(message: str) -> None:
    """One line on stderr for something the user should know while the run goes on."""
    import sys

    print(f"cascadev: warning: {message}", file=sys.stderr)
