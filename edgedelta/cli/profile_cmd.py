"""`edgedelta profile ART [ART2 ...] [--device NAME|all] [--context 512,2048]`: measure load,
time to first token, decode tokens/s and peak RSS on this host for each context length (each
in a fresh process), calibrate the planner's runtime overhead (saved beside the artifact),
then plan the devices. --json writes everything; --report DIR writes report.md/.html + charts."""

from __future__ import annotations

import sys

from .common import output_dir, output_file


def add_parser(subparsers):
    p = subparsers.add_parser("profile", help="measure an artifact on this host and plan target devices", description=__doc__)
    p.add_argument("artifacts", nargs="+", help="artifact folder(s), e.g. the original and the compressed one")
    p.add_argument("--device", default="all", help="device name, comma list or 'all'")
    p.add_argument("--context", default="512,2048", help="context lengths to measure and plan, e.g. 512,2048")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens decoded per measurement")
    p.add_argument("--provider", default="cpu", help="auto|cpu|cuda")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-measure", action="store_true", help="only plan (uses saved calibrations)")
    p.add_argument("--no-save-calibration", action="store_true", help="do not write <artifact>.calibration.json")
    p.add_argument("--devices-dir", action="append", default=[], help="extra folder of device files")
    p.add_argument("--json", dest="json_out", type=output_file, default=None, help="write measurements and plans as JSON here")
    p.add_argument("--report", type=output_dir, default=None, help="write report.md, report.html and PNG charts into this folder")
    return p


def run(args) -> int:
    from ..devices import select
    from ..devices.assess import assess
    from ..devices.tables import plans_table, runs_table
    from ..errors import ConfigError
    from ..extras import require_extra
    from ..fsutil import write_json_atomic
    from ..runtime.profiler import parse_contexts
    from ..runtime.session import resolve_provider

    if args.report:
        require_extra("report")  # before minutes of profiling, not after
    contexts = parse_contexts(args.context)
    if args.new_tokens < 1 or min(contexts) <= args.new_tokens:
        raise ConfigError(f"every context must exceed --new-tokens ({args.new_tokens}); got {min(contexts)}")
    provider = resolve_provider(args.provider)
    devs = select(args.device, args.devices_dir)
    data = assess(args.artifacts, contexts, devs, args.new_tokens, provider, args.threads, measure=not args.no_measure,
                  save_calibration=not args.no_save_calibration, log=lambda m: sys.stderr.write(m + "\n"))
    runs = [r for m in data["models"] for r in m["runs"]]
    if runs:
        sys.stdout.write("measured on this host\n" + runs_table(runs) + "\n\n")
    sys.stdout.write("plans\n" + plans_table(data["plans"]) + "\n")
    if args.json_out:
        write_json_atomic(args.json_out, {**data, "plans": [p.to_dict() for p in data["plans"]]})
    if args.report:
        from ..devices.report import write_report

        path = write_report(args.report, data, devs)
        sys.stdout.write(f"report: {path}\n")
    return 0
