"""The device path on aarch64, emulated: `edgedelta bundle` for a Raspberry Pi 5, installed
offline by its install.sh in an arm64 Debian 12 (Raspberry Pi OS 12's base, Python 3.11) run by
qemu-user, then the default model's artifacts run there (ONNX Runtime's aarch64 build and its
arm64 kernels) and compared with this x86_64 host: same greedy tokens, logit differences.

  python bench/arm64_emulated.py [--work bench/_work]     (root; ~15 min on 2 cores)

Set-up it does itself, idempotently: Debian's qemu-user 10 (bookworm-backports; 7.2 segfaults
in ONNX Runtime's CPU detection), debootstrap of an arm64 Debian 12 with python3-venv, and a
binfmt_misc entry so the chroot runs arm64 programs. Emulation says nothing about speed (TCG
translates every instruction): the arm64 layout's speed still needs a real arm64 machine.
Writes bench/results/arm64_emulated.{json,md}."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1]))  # last: only an installed edgedelta has export, runtime, devices
sys.path.insert(0, str(Path(__file__).resolve().parent))

from arm64_probe import probe  # noqa: E402
from edgedelta.devices import get  # noqa: E402
from edgedelta.devices.bundle import BundleConfig, build_bundle  # noqa: E402
from runtime_artifacts import ensure_artifacts  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEBIAN = "http://deb.debian.org/debian"
# aarch64 ELF header and mask (the entry Debian's qemu-user-binfmt registers); F: qemu is opened now,
# so the chroot needs no copy of it
BINFMT = (r":qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:"
          r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64:F")


def sh(cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=True, text=True, capture_output=True, **kw)


def ensure_emulator(log) -> str:
    version = subprocess.run("qemu-aarch64 --version", shell=True, text=True, capture_output=True).stdout
    if " 10." not in version.split("\n")[0]:
        log("installing qemu-user 10 from bookworm-backports ...")
        Path("/etc/apt/sources.list.d/edgedelta-bpo.list").write_text(f"deb {DEBIAN} bookworm-backports main\n")
        sh("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports qemu-user debootstrap")
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        sh(f"mount -t binfmt_misc binfmt_misc {binfmt}")
    if not (binfmt / "qemu-aarch64").exists():
        (binfmt / "register").write_text(BINFMT)
    return sh("qemu-aarch64 --version").stdout.split("\n")[0]


def ensure_rootfs(root: Path, log) -> None:
    """arm64 Debian 12: debootstrap's first stage, then every package it fetched unpacked
    (python3 and its venv module run unconfigured; the second stage would take 10+ minutes)."""
    if (root / "usr/bin/python3.11").exists():
        return
    log(f"debootstrap arm64 Debian 12 into {root} ...")
    sh(f"debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv,libstdc++6 bookworm {root} {DEBIAN}")
    for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
        sh(f"dpkg -x {deb} {root}")


def in_chroot(root: Path, command: str, timeout: int = 3600) -> subprocess.CompletedProcess:
    for sub, how in (("proc", "-t proc proc"), ("dev", "--bind /dev")):
        if not os.path.ismount(root / sub):
            sh(f"mount {how} {root / sub}")
    # a clean environment: the host's PIP_* and PYTHON* settings do not exist on a device
    return subprocess.run(["chroot", str(root), "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "HOME=/root", "/bin/sh", "-c", command],
                          text=True, capture_output=True, timeout=timeout)


def ensure_arm64_artifacts(work: Path, log) -> list[Path]:
    """The original and the compressed model exported with --cpu-arch arm64."""
    from edgedelta.errors import EdgeDeltaError
    from edgedelta.export import GRAPH_REVISION, ExportConfig, export_onnx
    from edgedelta.manifest import verify_manifest

    cfg, out = ExportConfig(cpu_arch="arm64"), []
    for source, name in (("default", "smollm2-onnx-arm64"), (work / "smollm2-delta", "smollm2-delta-onnx-arm64")):
        art = work / name
        try:
            m = verify_manifest(art)
            fresh = m.get("export_config") == cfg.to_dict() and m.get("graph_revision") == GRAPH_REVISION
        except EdgeDeltaError:
            fresh = False
        if not fresh:
            log(f"exporting {name} ...")
            export_onnx(source, cfg, art, force=True)
        out.append(art)
    return out


def compare(host: dict, guest: dict) -> dict:
    a, b = np.array(host["first_logits"]), np.array(guest["first_logits"])
    same = next((i for i, (x, y) in enumerate(zip(host["tokens"], guest["tokens"])) if x != y), len(host["tokens"]))
    return {"same_tokens": same, "of": len(host["tokens"]), "max_abs_logit_diff": float(np.abs(a - b).max()),
            "logit_scale": float(np.abs(a).max()), "argmax_equal": int(a.argmax()) == int(b.argmax())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(Path(__file__).parent / "_work"))
    args = ap.parse_args()
    root = Path(args.work) / "arm64-rootfs"
    try:
        run(Path(args.work), root)
    finally:
        for sub in ("proc", "dev"):  # in_chroot's mounts
            if os.path.ismount(root / sub):
                subprocess.run(["umount", str(root / sub)])
    return 0


def run(work: Path, root: Path) -> None:
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    facts: dict = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
    facts["qemu"] = ensure_emulator(log)
    ensure_rootfs(root, log)
    cached = work / "smollm2-delta"  # the compressed model bench/runtime_artifacts.py saved
    orig, comp, _ = ensure_artifacts(work, log=log, compressed=cached if (cached / "manifest.json").is_file() else None)
    arts = [orig, comp, *ensure_arm64_artifacts(work, log)]

    bundle = root / "root/bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    t = time.perf_counter()
    build_bundle(arts, bundle, BundleConfig(cpu_arch=get("rpi5-8gb").cpu_arch), log=log)
    facts["bundle_s"] = round(time.perf_counter() - t, 1)
    info = json.loads((bundle / "bundle.json").read_text())
    facts["bundle"] = {k: info[k] for k in ("cpu_arch", "python", "machine", "edgedelta_version")}
    facts["wheels"] = {"count": len(info["wheels"]), "MiB": round(sum(w["bytes"] for w in info["wheels"]) / 2**20, 1),
                       "torch_free": not any(w["file"].startswith("torch-") for w in info["wheels"])}
    log("install.sh in the arm64 chroot (offline) ...")
    t = time.perf_counter()
    proc = in_chroot(root, "cd /root/bundle && sh install.sh")
    facts["install"] = {"rc": proc.returncode, "emulated_s": round(time.perf_counter() - t, 1),
                        "last_line": (proc.stdout.strip().splitlines() or [""])[-1][:200], "stderr": proc.stderr[-500:]}
    if proc.returncode != 0:
        raise SystemExit(f"install.sh failed in the chroot: {proc.stderr[-1000:]}")
    shutil.copy(Path(__file__).parent / "arm64_probe.py", bundle / "arm64_probe.py")
    rows = []
    for art in arts:
        log(f"probe {art.name}: host, then emulated aarch64 ...")
        host = probe(str(art))
        proc = in_chroot(root, f"cd /root/bundle && venv/bin/python arm64_probe.py artifacts/{art.name}")
        if proc.returncode != 0:
            rows.append({"artifact": art.name, "error": proc.stderr[-500:]})
            continue
        guest = json.loads(proc.stdout)
        layout = json.loads((art / "manifest.json").read_text())["export_config"].get("cpu_arch")
        rows.append({"artifact": art.name, "export_cpu_arch": layout, "guest": {k: guest[k] for k in ("machine", "onnxruntime", "python")},
                     "host_text": host["text"], "guest_text": guest["text"], **compare(host, guest)})
    facts["artifacts"] = rows
    write(facts)


def write(facts: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "arm64_emulated.json").write_text(json.dumps(facts, indent=2) + "\n")
    w = facts["wheels"]
    md = ["# Device bundle on aarch64 (emulated)", "",
          f"{facts['date']}; {facts['qemu']}; guest: arm64 Debian 12 (debootstrap), Python {facts['bundle']['python']}. "
          f"The bundle (`edgedelta bundle` of the four artifacts, `--device rpi5-8gb`) took {facts['bundle_s']} s on the host and holds {w['count']} wheels "
          f"({w['MiB']} MiB, {'no torch' if w['torch_free'] else 'WITH torch'}); its install.sh, run in the arm64 chroot "
          f"with no index (`pip --no-index --require-hashes`), exited {facts['install']['rc']} after "
          f"{facts['install']['emulated_s']} s of emulation.", "",
          "Each artifact: the prompt's last-position logits and 16 greedy tokens from edgedelta's runtime, on this x86_64 "
          "host and on ONNX Runtime's aarch64 build in the chroot (bench/arm64_probe.py).", "",
          "| artifact | exported for | guest ORT | same greedy tokens | max abs logit diff | max abs logit | host text | guest text |",
          "|---|---|---|---|---|---|---|---|"]
    for r in facts["artifacts"]:
        if "error" in r:
            md.append(f"| {r['artifact']} | | | error: {' '.join(r['error'].split())[:200]} | | | | |")
            continue
        md.append(f"| {r['artifact']} | {r['export_cpu_arch']} | {r['guest']['onnxruntime']} ({r['guest']['machine']}) | "
                  f"{r['same_tokens']}/{r['of']} | {r['max_abs_logit_diff']:.2e} | {r['logit_scale']:.1f} | "
                  f"{json.dumps(r['host_text'])} | {json.dumps(r['guest_text'])} |")
    md += ["", "Emulation checks that the artifacts and the device install work on arm64 and give the same results; "
           "it measures no speed. What each layout costs ONNX Runtime's arm64 kernels is counted (bytes moved per "
           "token) in [arm64_layout_counts.md](arm64_layout_counts.md); decode speed on a Pi or a Jetson is still "
           "unmeasured.", ""]
    (RESULTS / "arm64_emulated.md").write_text("\n".join(md))


if __name__ == "__main__":
    raise SystemExit(main())
