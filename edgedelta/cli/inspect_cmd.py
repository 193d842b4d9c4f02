"""`edgedelta inspect ART [--json OUT]`: the sharing audit of an ONNX artifact as a table
(unique bytes, shared initializers and their consumer counts, delta bytes, duplication),
after checking every file against the artifact's manifest."""

from __future__ import annotations

from .common import output_file


def add_parser(subparsers):
    p = subparsers.add_parser("inspect", help="audit an ONNX artifact: shared weights, consumers, duplication", description=__doc__)
    p.add_argument("artifact", help="an artifact folder written by `edgedelta export`")
    p.add_argument("--json", metavar="OUT", type=output_file, help="also write the full audit (every initializer) as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the manifest checksum verification")
    return p


def run(args) -> int:
    from pathlib import Path

    from edgedelta.errors import ModelLoadError
    from edgedelta.export import audit, format_table
    from edgedelta.fsutil import write_json_atomic
    from edgedelta.manifest import read_manifest, verify_manifest

    path = Path(args.artifact)
    if not path.is_dir():
        raise ModelLoadError(f"artifact folder '{path}' does not exist")
    manifest = None
    if (path / "manifest.json").is_file():
        manifest = read_manifest(path)
        if not args.no_verify:
            verify_manifest(path, manifest)
    report = audit(path)
    if manifest and manifest.get("parameters"):
        p = manifest["parameters"]
        print(f"unique parameters   {p['total']:,}  ({p['unique_bytes_at_dtype'] / 1e6:.2f} MB at {manifest['export_config']['dtype']})")
    print(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    return 0 if report["ok"] else 1
