"""The ``peo`` command line: operate a fleet of persistent executable objects.

``peo [--store URL] [-v] VERB ...``. The store comes from ``--store``, else ``PEO_STORE``,
else ``sqlite:///peo.db`` in the current directory.

Exit codes: 0 success; 1 an operation or a verification failed (unknown id, tampered
chain, unreachable store); 2 bad usage or bad input (malformed JSON, bad flag, unreadable
file). A user mistake never prints a traceback: every error the library raises on purpose
(:class:`peo.errors.PeoError`) becomes one ``peo: error: ...`` line on stderr.

Output for people is aligned plain text (no extra dependency); ``--json`` output is for
programs and is always valid JSON (bytes become hex strings, non-finite floats strings).

Layout: this module runs the CLI (``main``, ``entry``, errors to exit codes, logging);
:mod:`.parser` builds the parser and holds what every verb shares; :mod:`.render` is
what the verbs print with; each other module implements a group of verbs and registers
their subparsers (see :data:`.parser.VERBS`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import traceback

from ..errors import CodecError, PeoError, PolicyError, UsageError
from .parser import build_parser
from .render import clean

__all__ = ["entry", "main"]

log = logging.getLogger("peo.cli")

#: Set when ``peo node`` abandoned steps in flight: the console script must not wait for them.
_exit_now = False


def exit_at_once() -> None:
    """Make :func:`entry` leave with ``os._exit`` once :func:`main` returns: a sync handler
    still sleeping in a worker thread would keep the interpreter from exiting (executor
    threads are joined at exit)."""
    global _exit_now
    _exit_now = True


def _setup_logging(verbosity: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if verbosity:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("peo: %(levelname)s: %(message)s"))
    root = logging.getLogger("peo")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity else logging.WARNING)
    return handler


def _peo_error(exc: BaseException) -> PeoError | None:
    """The first PeoError in ``exc`` (TaskGroups wrap errors in groups)."""
    if isinstance(exc, PeoError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _peo_error(inner)
            if found is not None:
                return found
    return None


def _exit_code(exc: PeoError) -> int:
    if isinstance(exc, UsageError | PolicyError | CodecError):
        return 2
    return 1  # NotFound, Integrity, Store, ObjectFailed, Timeout: the operation failed


def _report(exc: BaseException, verbose: int) -> int:
    """Say what went wrong on stderr, in one line unless -v; returns the exit code."""
    err = _peo_error(exc)
    if err is None:
        # Not a user mistake: a bug. One line by default; the traceback with -v.
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"peo: internal error: {type(exc).__name__}: {clean(exc, 500)} "
              f"(this is a bug; run with -v for details)", file=sys.stderr)
        return 1
    log.debug("error", exc_info=err)
    print(f"peo: error: {clean(err)}", file=sys.stderr)
    return _exit_code(err)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any("\x00" in a for a in argv):
        print("peo: error: arguments must not contain NUL bytes", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            if args.verb != "demo":
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.demo_args = extra
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler = _setup_logging(args.verbose)
    try:
        if inspect.iscoroutinefunction(args.fn):
            return int(asyncio.run(args.fn(args)))
        return int(args.fn(args))
    except BrokenPipeError:
        raise  # entry() handles a closed pipe; in-process callers see it
    except KeyboardInterrupt:
        print("peo: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        return _report(exc, args.verbose)
    finally:
        logging.getLogger("peo").removeHandler(handler)


def entry() -> None:
    """Console script ``peo``."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `peo ls | head`: the reader left; not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    if _exit_now:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
