"""The ``leadflow`` command line, one module per command group, each command's arguments
declared beside its handler.

Every command that runs a hop runs it as a Prefect flow (on Prefect's ephemeral API unless
``PREFECT_API_URL`` points at a server), its options named like the flow's parameters.
``--json`` prints one JSON document on stdout and nothing else there; logs go to stderr.
Exit codes: 0 done, 1 a gate or the audit failed, 2 bad input or config (the message names
the file, row or field), 3 done, but messages were left undelivered (``leadflow outbox list``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from app.cli import (
    automations,
    capture,
    crm,
    doctor,
    operations,
    outbox,
    pipeline,
    routing,
    sales,
    serving,
    setup,
)
from app.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNDELIVERED,
    environment_epilog,
    fail,
    quiet_prefect,
)

__all__ = ["EXIT_UNDELIVERED", "build_parser", "main"]

# The groups, in the order `leadflow --help` lists them.
GROUPS = (
    setup,
    operations,
    capture,
    pipeline,
    routing,
    sales,
    outbox,
    crm,
    serving,
    doctor,
    automations,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leadflow", description="The ``leadflow`` command line.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        for command in group.COMMANDS:
            declared = sub.add_parser(
                command.name,
                help=command.help,
                description=command.help,
                epilog=environment_epilog(command.environment) if command.environment else None,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            declared.set_defaults(handler=command.handler)
            if command.arguments is not None:
                command.arguments(declared)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_prefect()
    if argv is None:  # a real command, not a call from Python: tie its children to it
        import faulthandler
        import signal

        from leadflow.watchdog import guard_children

        guard_children()
        # `kill -USR1 PID` prints every thread's stack to stderr: where a stuck command waits.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = build_parser().parse_args(argv)
    from leadflow.capture.sources import InputError
    from leadflow.config import ConfigError

    try:
        return args.handler(args)
    except BrokenPipeError:
        # `leadflow ... | head`: the reader left; nothing more to say, and nothing to flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ConfigError, InputError) as exc:
        if args.debug:
            raise
        return fail(str(exc))
    except Exception as exc:
        if args.debug:
            raise
        if _bad_configuration(exc):
            return fail(str(exc))
        return fail(
            f"{type(exc).__name__}: {exc} (run with --debug for the traceback)", EXIT_FAILED
        )


def _bad_configuration(exc: Exception) -> bool:
    """A missing block (of any kind), or a setting ``leadflow.settings`` refused (a variable
    that is not a number, a block it names that does not exist): exit 2, one line."""
    if type(exc).__name__ == "MissingBlock":
        return True
    if not isinstance(exc, ValueError):
        return False
    trace = exc.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and trace.tb_frame.f_globals.get("__name__") == "leadflow.settings"


if __name__ == "__main__":
    sys.exit(main())
