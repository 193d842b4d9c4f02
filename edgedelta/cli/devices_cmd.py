"""`edgedelta devices`: the known target devices (devices/profiles/*.json and folders in
$EDGEDELTA_DEVICES). Add one by adding a file: see ADDING_A_DEVICE.md."""

from __future__ import annotations

import json
import sys


def add_parser(subparsers):
    p = subparsers.add_parser("devices", help="list the target device profiles", description=__doc__)
    p.add_argument("--devices-dir", action="append", default=[], help="extra folder of device files (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--sources", action="store_true", help="also print each device's bandwidth source")
    return p


def run(args) -> int:
    from ..devices import all_devices
    from ..devices.tables import devices_table

    devs = list(all_devices(args.devices_dir).values())
    if args.json:
        sys.stdout.write(json.dumps([d.to_dict() for d in devs], indent=2) + "\n")
        return 0
    sys.stdout.write(devices_table(devs) + "\n")
    if args.sources:
        for d in devs:
            sys.stdout.write(f"\n{d.name}: {d.bandwidth_source}\n")
    return 0
