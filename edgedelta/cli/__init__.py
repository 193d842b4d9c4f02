"""`edgedelta` console script. Each subcommand lives in its own module exposing
`add_parser(subparsers)` and `run(args) -> int`; they are listed explicitly in COMMANDS.
User errors (EdgeDeltaError) become one line on stderr and exit code 2. On a lean (device)
install a command whose packages are missing is still listed, and says which extra it needs."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading

from ..errors import EdgeDeltaError
from ..extras import check_extra, missing_extra

# subcommand -> module (imported lazily so `edgedelta --help` stays fast)
COMMANDS: dict[str, str] = {
    "compress": "edgedelta.cli.compress_cmd",
    "eval": "edgedelta.cli.eval_cmd",
    "distill": "edgedelta.cli.distill_cmd",
    "compare": "edgedelta.cli.compare_cmd",
    "export": "edgedelta.cli.export_cmd",
    "inspect": "edgedelta.cli.inspect_cmd",
    "run": "edgedelta.cli.run_cmd",
    "serve": "edgedelta.cli.serve_cmd",
    "profile": "edgedelta.cli.profile_cmd",
    "devices": "edgedelta.cli.devices_cmd",
    "plan": "edgedelta.cli.plan_cmd",
    "bundle": "edgedelta.cli.bundle_cmd",
    "pipeline": "edgedelta.cli.pipeline_cmd",
    "models": "edgedelta.cli.models_cmd",
}
# subcommands that need an extra (edgedelta/extras.py); the others run on a device install
EXTRA_OF_COMMAND: dict[str, str] = dict.fromkeys(("compress", "eval", "distill", "compare", "export", "pipeline"), "compress")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, exit 2
        sys.stderr.write(f"edgedelta: error: {message}\n")
        raise SystemExit(2)


def build_parser(unavailable: dict[str, EdgeDeltaError]) -> argparse.ArgumentParser:
    """The parser; `unavailable` (unavailable_commands()) are listed but not built."""
    parser = _Parser(prog="edgedelta", description="DeltaLLM compression to an offline edge device.")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"edgedelta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, modname in COMMANDS.items():
        if name in unavailable:  # listed in --help, refused by main() before argument parsing
            sub.add_parser(name, help=f"(not in this install: pip install 'edgedelta[{EXTRA_OF_COMMAND[name]}]')")
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:  # subcommand not built yet
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def unavailable_commands() -> dict[str, EdgeDeltaError]:
    """The commands whose extra this install lacks, and the error each gives."""
    missing = {extra: check_extra(extra) for extra in set(EXTRA_OF_COMMAND.values())}
    return {name: missing[extra] for name, extra in EXTRA_OF_COMMAND.items() if missing[extra] is not None}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    unavailable = unavailable_commands()
    if argv and argv[0] in unavailable:
        return _user_error(argv[0], unavailable[argv[0]])
    parser = build_parser(unavailable)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed as one line
        return int(e.code or 0)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    old_term = _term_as_interrupt()
    try:
        return int(args._run(args) or 0)
    except EdgeDeltaError as e:
        return _user_error(args.command, e)
    except ModuleNotFoundError as e:  # a package of an extra, imported as the command runs
        missing = missing_extra(e)
        return _internal_error(args.command, e) if missing is None else _user_error(args.command, missing)
    except KeyboardInterrupt:
        sys.stderr.write(f"edgedelta {args.command}: interrupted\n")
        return 130
    except Exception as e:  # an unexpected bug: still one line, unless debugging
        return _internal_error(args.command, e)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _user_error(command: str, e: EdgeDeltaError) -> int:
    msg = " ".join(str(e).split())  # one line even when a library's message has several
    sys.stderr.write(f"edgedelta {command}: error: {msg}\n")
    return e.exit_code


def _internal_error(command: str, e: Exception) -> int:
    if os.environ.get("EDGEDELTA_DEBUG"):
        raise e
    sys.stderr.write(f"edgedelta {command}: internal error: {type(e).__name__}: {' '.join(str(e).split())} (set EDGEDELTA_DEBUG=1 for a traceback)\n")
    return 1


def _term_as_interrupt():
    """SIGTERM (a service manager stopping us, `kill`) unwinds like Ctrl-C, so atomic outputs
    remove their temporary folders instead of leaving them behind. Returns the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    raise SystemExit(main())
