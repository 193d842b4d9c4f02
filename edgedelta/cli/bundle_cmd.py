"""`edgedelta bundle ART [ART ...] --device NAME|--cpu-arch ARCH --out DIR`: one folder to copy
to an offline device: the artifacts, edgedelta's device runtime and its dependencies as wheels
for that device's CPU and Python, and install.sh (devices/bundle.py). Building it downloads the
wheels from the package index; installing it on the device needs no network."""

from __future__ import annotations

import argparse
import sys

from .common import out_args


def add_parser(subparsers):
    from edgedelta.export.config import CPU_ARCHS

    p = subparsers.add_parser("bundle", help="artifacts + device runtime wheels in one folder for an offline device",
                              description=__doc__)
    p.add_argument("artifacts", nargs="+", help="artifact folders written by `edgedelta export`")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--device", help="a device profile (`edgedelta devices`): its CPU family picks the wheels")
    target.add_argument("--cpu-arch", choices=CPU_ARCHS, help="the device's CPU family")
    p.add_argument("--python", default="3.11", help="the device's python3 version X.Y (default 3.11, Raspberry Pi OS 12; "
                                                    "Ubuntu 22.04 and JetPack 6 have 3.10)")
    p.add_argument("--devices-dir", action="append", default=[], help="extra folder of device files (repeatable)")
    p.add_argument("--service", action="store_true", help="add a systemd unit that runs `edgedelta serve` on the first "
                                                          "artifact (install.sh says how to enable it)")
    out_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ..devices import get
    from ..devices.bundle import BundleConfig, build_bundle
    from ..errors import ConfigError

    arch = args.cpu_arch
    if args.device:
        dev = get(args.device, args.devices_dir)
        if dev.cpu_arch is None:
            raise ConfigError(f"device '{dev.name}' has no cpu_arch in its profile; pass --cpu-arch instead")
        arch = dev.cpu_arch
    cfg = BundleConfig(cpu_arch=arch, python=args.python, service=args.service)
    out = build_bundle(args.artifacts, args.out, cfg, force=args.force, log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"wrote {out} (copy it to the device, then: sh install.sh)")
    return 0
