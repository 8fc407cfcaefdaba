"""The `sevlm` command line: one entry point, one module per subcommand in sevlm/commands.

Each command module defines HELP (one line), EXAMPLES (text), add_arguments(parser) and
run(args) -> int | None. Modules import their heavy dependencies inside run(), and `main` builds
the arguments of the invoked command only (an `add_arguments` may read its choices from a library
module), so `sevlm --help` and each command's start pay only for that command.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from sevlm.errors import SevlmError  # importing sevlm sets the passive OpenMP wait (sevlm/__init__.py)
from sevlm.io import ensure_parent
from sevlm.outputs import check_outputs

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
    "export",
    "ablate",
    "demo",
)


def _module(name: str):
    return importlib.import_module(f"sevlm.commands.{name.replace('-', '_')}")


def build_parser(with_arguments=COMMANDS) -> argparse.ArgumentParser:
    """The command line: every command listed, the arguments of those in `with_arguments` built
    (`main` builds the invoked command's only)."""
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
        if name in with_arguments:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def invoked_command(argv: list[str]) -> str | None:
    """The subcommand named in `argv`: the first word that is one (only --debug and --local_rank N
    come before it)."""
    return next((word for word in argv if word in COMMANDS), None)


# subcommands whose --out must not land on an input or in a folder another command owns
# (`prepare` guards its own --out; `train` writes a run folder, `demo` its own tree)
GUARDED = ("evaluate", "generate", "retrieve", "shard", "extract")
INPUT_FLAGS = (
    "predictions",
    "references",
    "run",
    "features",
    "dataset",
    "images",
    "query_image",
    "lexicon",
    "vad_lexicon",
    "weights",
    "cache_dir",
)


def _check_outputs(args) -> None:
    """Refuse an --out that is an input of the command or lies in an owned folder (sevlm.outputs)."""
    outputs = {"--out": args.out}
    if args.command in ("evaluate", "retrieve"):  # REPORT.md is written beside REPORT.json
        outputs["--out (its .md beside it)"] = str(Path(args.out).with_suffix(".md"))
    inputs = {
        f"--{k.replace('_', '-')}": getattr(args, k)
        for k in INPUT_FLAGS
        if isinstance(getattr(args, k, None), (str, os.PathLike))
    }
    check_outputs(outputs, inputs)


def _resource_error_line(e: BaseException) -> str | None:
    """Out of memory or a full disk, as one line that says what to change; None for other errors
    (those keep their traceback: they are bugs to report)."""
    text = " ".join(str(e).split())
    low = text.lower()
    if (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or any(
            s in low for s in ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory")
        )
    ):
        return (
            f"out of memory ({text[:200] or type(e).__name__}); use a smaller model (model.n_embd, model.n_layer), "
            "a smaller schedule.micro_batch or --batch-size, fewer data.num_workers, or a machine with more memory"
        )
    if any(s in low for s in ("file write failed", "no space left", "disk quota exceeded", "enospc")):
        return (
            f"could not write a file, the disk is probably full ({text[:200]}); free space on the output's disk "
            "(or point --out elsewhere) and run again: finished checkpoints and exports are kept"
        )
    return None


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
    argv = sys.argv[1:] if argv is None else list(argv)
    command = invoked_command(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        if getattr(args, "out", None):
            if args.command in GUARDED:
                _check_outputs(args)
            ensure_parent(args.out)
        rc = args._run(args)
    except (SevlmError, OSError) as e:
        if args.debug:
            raise
        message = _os_error_line(e) if isinstance(e, OSError) else str(e)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            message += "; free space on that disk (or write elsewhere) and run again"
        print(f"sevlm {args.command}: error: {message}", file=sys.stderr)
        return 1
    except (MemoryError, RuntimeError) as e:
        line = None if args.debug else _resource_error_line(e)
        if line is None:
            raise
        print(f"sevlm {args.command}: error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sevlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
