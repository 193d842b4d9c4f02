"""`edgedelta plan ART [ART2 ...] --device NAME|all --context N[,N]`: predicted peak memory,
fit verdict with margin, and decode ceiling per device; several artifacts (original and
compressed) side by side. Uses the calibration `edgedelta profile` saved beside each
artifact, else a default runtime overhead (marked)."""

from __future__ import annotations

import sys

from .common import output_file


def add_parser(subparsers):
    p = subparsers.add_parser("plan", help="will an artifact fit a device, and how fast can it decode at most",
                              description=__doc__)
    p.add_argument("artifacts", nargs="+", help="artifact folder(s); give the original and the compressed one to compare")
    p.add_argument("--device", default="all", help="device name, comma list, 'host' or 'all' (see `edgedelta devices`)")
    p.add_argument("--context", default="2048", help="context length(s) in tokens, e.g. 512,2048")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="plan for a prompt prefilled this many tokens at a time (run --prefill-chunk)")
    p.add_argument("--calibration", default=None, help="calibration JSON (default: the one beside each artifact)")
    p.add_argument("--devices-dir", action="append", default=[], help="extra folder of device files")
    p.add_argument("--json", dest="json_out", type=output_file, default=None, help="write the plans as JSON here")
    p.add_argument("--breakdown", action="store_true", help="also print the terms of each prediction")
    return p


def run(args) -> int:
    from ..devices import plan, select
    from ..devices.planner import Calibration
    from ..devices.tables import plan_breakdown_table, plans_table
    from ..errors import ConfigError
    from ..fsutil import write_json_atomic
    from ..runtime.artifact import Artifact
    from ..runtime.profiler import parse_contexts

    contexts = parse_contexts(args.context)
    if args.batch < 1:
        raise ConfigError(f"--batch must be ≥ 1, got {args.batch}")
    devs = select(args.device, args.devices_dir)
    cal = Calibration.from_json(args.calibration) if args.calibration else None
    plans = []
    for a in args.artifacts:
        art = Artifact.open(a)
        for c in contexts:
            for d in devs:
                plans.append(plan(art, d, c, args.batch, cal, prefill_chunk=args.prefill_chunk))
    sys.stdout.write(plans_table(plans) + "\n")
    if args.breakdown:
        sys.stdout.write("\n" + plan_breakdown_table(plans) + "\n")
    if not any(p.overhead_calibrated for p in plans):
        sys.stdout.write("\nruntime overhead not calibrated (default used): run `edgedelta profile ART` on this host first\n")
    sys.stdout.write("decode ceiling (≤ tok/s) = bandwidth / bytes read per token; shared weights are re-read by every "
                     "layer that uses them, so sharing lowers memory, not this ceiling\n")
    if args.json_out:
        write_json_atomic(args.json_out, [p.to_dict() for p in plans])
    return 0
