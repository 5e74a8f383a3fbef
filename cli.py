"""The CLCRec command line: thin typer commands that build a config and call library code.

    python cli.py --help
    python cli.py train                      # the whole flow on the built-in synthetic default

The commands live in commands/ (one module per stage); this file registers them and is the entry
point. Expected failures (bad input, a stale cache, a diverged run) raise
`common.errors.UserError`; `main()` prints their message and exits 1 without a traceback, as it does
for the operating system's refusals (permissions, a name too long, a full disk: the path named),
numbers too large and sizes that do not fit in memory, caught here in one place.
"""

from __future__ import annotations

import clcrec  # noqa: F401 - first: sets the OpenMP wait default before torch loads (clcrec/__init__.py)
import errno
import signal
import sys

from commands import data, negatives, training, tune, serving, bench  # noqa: F401,I001 - registers the commands, in flow order (--help lists them so)
from commands.apps import app, console
from common.errors import UserError


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so that atomic writers clean up as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


# What an OS error means for the user, by errno: appended to the one line that names the path.
OS_ADVICE = {errno.EACCES: "fix its permissions or choose another path", errno.EPERM: "fix its permissions or choose another path",
             errno.ENAMETOOLONG: "use shorter file and folder names", errno.ENOSPC: "free some disk space, or write elsewhere",
             errno.EDQUOT: "free some disk space, or write elsewhere", errno.EROFS: "choose a writable location",
             errno.EEXIST: "another process created it meanwhile (one writer wins); nothing of it was changed"}


def describe_failure(e: BaseException) -> str | None:
    """The one line for an expected failure that is not a UserError (None: a bug, shown as one)."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, OSError) and e.errno is not None:
        name = e.filename2 if e.errno == errno.EEXIST and e.filename2 else e.filename  # link/rename: the target
        path = f"{name}: " if name is not None else ""
        return f"{path}{e.strerror or e}; {OS_ADVICE.get(e.errno, 'nothing was written in its place')}"
    if isinstance(e, MemoryError):  # numpy's ArrayMemoryError too: a size option or file asked too much
        return f"not enough memory ({str(e).splitlines()[0][:200] or 'MemoryError'}); lower the sizes given"
    if isinstance(e, OverflowError):
        return f"a number given is too large ({str(e)[:200]}); use a smaller value"
    return None


def fail(message: str, code: int = 1) -> None:
    # soft_wrap: never break a path in the message when stderr is not a terminal
    console.print("[bold red]error:[/bold red] ", end="")
    console.print(message, highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()  # standalone mode: typer handles usage errors (exit 2) and --help itself
    except (UserError, OSError, MemoryError, OverflowError) as e:
        message = describe_failure(e)
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    except Terminated:
        console.print("terminated (SIGTERM); outputs are as they were or complete")
        sys.exit(143)


if __name__ == "__main__":
    main()
