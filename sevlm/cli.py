"""The `sevlm` command line: one entry point, one module per subcommand in sevlm/commands.

Each command module defines HELP (one line), EXAMPLES (text), add_arguments(parser) and
run(args) -> int | None. Modules import their heavy dependencies inside run(), so
`sevlm --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sevlm.errors import SevlmError  # importing sevlm sets the passive OpenMP wait (sevlm/__init__.py)

COMMANDS = (
    "demo-data",
    "prepare",
    "extract",
    "shard",
    "train",
    "generate",
    "evaluate",
    "retrieve",
    "predict",
    "ablate",
    "demo",
)


def _module(name: str):
    return importlib.import_module(f"sevlm.commands.{name.replace('-', '_')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sevlm",
        description="Train and serve a small emotional vision-language model for visual art.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    # The `deepspeed` launcher passes --local_rank before the subcommand; LOCAL_RANK carries it too.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        mod = _module(name)
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=mod.HELP,
            epilog=f"examples:\n{mod.EXAMPLES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _os_error_line(e: OSError) -> str:
    """An unwritable, missing or misplaced path as one line that names it (the traceback says
    nothing more to a user; --debug shows it)."""
    if e.filename is None:
        return " ".join(str(e).split())
    where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
    if isinstance(e, FileExistsError) and os.path.isfile(e.filename):  # mkdir over a file
        return f"{where}: exists and is not a folder"
    return f"{where}: {e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "out", None):
            from sevlm.io import ensure_parent

            ensure_parent(args.out)
        rc = args._run(args)
    except (SevlmError, OSError) as e:
        if args.debug:
            raise
        message = _os_error_line(e) if isinstance(e, OSError) else str(e)
        print(f"sevlm {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sevlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
