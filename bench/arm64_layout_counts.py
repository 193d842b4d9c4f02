"""What a one-token weight chain costs on aarch64 in each unpacked layout, counted, not timed:
guest instructions and the bytes its loads and stores move, under qemu-aarch64 with the
counting plugin bench/qemu/counts.c, ONNX Runtime's aarch64 build from a device bundle.

This answers the question behind `export --cpu-arch arm64` (export/prepack.py) without an arm64
machine: whether MLAS reads a transposed shared weight, (1, N, K) under FusedMatMul(transB=1)
as the x86_64 layout stores it, in place or copies it per call, against (1, K, N) under
MatMul (the arm64 layout) and a prepacked 2-D weight. Bytes moved are what a bandwidth-bound
decode pays for; emulation timing is meaningless and is not reported.

  python bench/arm64_layout_counts.py --qemu-src DIR [--runs 2,22] [--repeats 2] [--decode-steps 2]

Then each artifact of that bundle: bytes moved per decode token (bench/arm64_probe.py).

Needs: bench/arm64_emulated.py run first (its arm64 Debian with the bundle installed), and a
qemu-aarch64 built with plugins from Debian's qemu 10 source (its static package has none):
  apt-get source --download-only -t bookworm-backports qemu; tar xf qemu_*.orig.tar.xz
  pip install meson==1.5.0 pycotap==1.3.1; apt-get install ninja-build libglib2.0-dev
  ./configure --target-list=aarch64-linux-user --enable-plugins --disable-system --disable-docs \\
      --disable-tools --disable-werror --disable-install-blobs && ninja -C build qemu-aarch64
Writes bench/results/arm64_layout_counts.{json,md}."""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LAYOUTS = ("packed_2d", "lifted_kn", "lifted_nk")
WEIGHTS = 8  # chained SmolLM2 MLP weights, 576 x 1536 and back: 28.3 MB per chain run
CPU = "cortex-a76"  # Raspberry Pi 5's core


def build_plugin(qemu_src: Path, out: Path) -> Path:
    glib = subprocess.run(["pkg-config", "--cflags", "glib-2.0"], check=True, text=True, capture_output=True).stdout.split()
    lib = out / "libcounts.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-I", str(qemu_src / "include/qemu"), *glib,
                    str(BENCH / "qemu/counts.c"), "-o", str(lib)], check=True)
    return lib


def counted(qemu: Path, plugin: Path, root: Path, script: str, *args: str) -> dict:
    """Run bench/`script` with the bundle's Python and packages under the counting qemu; the
    plugin's counts between the guest's two markers."""
    site = root / "root/bundle/venv/lib/python3.11/site-packages"
    # one guest thread: numpy's OpenBLAS threads would spin beside ONNX Runtime's and be counted too
    env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0", "PYTHONPATH": f"{site}:{BENCH}", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([str(qemu), "-cpu", CPU, "-plugin", str(plugin), "-d", "plugin", "-L", str(root),
                           str(root / "usr/bin/python3.11"), str(BENCH / script), *args],
                          env=env, text=True, capture_output=True, timeout=3600)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("insns ")]  # the plugin logs to stderr
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{script} {' '.join(args)} failed: {proc.stderr[-800:]}")
    f = line[-1].split()
    return {f[i]: int(f[i + 1]) for i in range(0, len(f), 2)}


def count_chain(qemu: Path, plugin: Path, root: Path, layout: str, runs: int) -> dict:
    """`runs` chain runs of `layout` (bench/layout_counts_guest.py)."""
    return counted(qemu, plugin, root, "layout_counts_guest.py", layout, str(runs), str(WEIGHTS))


def count_artifact(qemu: Path, plugin: Path, root: Path, name: str, steps: int) -> dict:
    """Per decode token of a bundled artifact (bench/arm64_probe.py --count-decode)."""
    c = counted(qemu, plugin, root, "arm64_probe.py", str(root / "root/bundle/artifacts" / name), "--count-decode", str(steps))
    return {k: v / steps for k, v in c.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qemu-src", required=True, type=Path, help="qemu source tree with build/qemu-aarch64 (plugins on)")
    ap.add_argument("--rootfs", type=Path, default=BENCH / "_work/arm64-rootfs")
    ap.add_argument("--runs", default="2,22", help="chain runs in the short and the long process")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--decode-steps", type=int, default=2, help="decode steps counted per bundled artifact")
    a = ap.parse_args()
    lo, hi = (int(x) for x in a.runs.split(","))
    qemu = a.qemu_src / "build/qemu-aarch64"
    mb = WEIGHTS * 576 * 1536 * 4 / 1e6
    per_run: dict[str, list[dict]] = {k: [] for k in LAYOUTS}
    with tempfile.TemporaryDirectory() as tmp:
        plugin = build_plugin(a.qemu_src, Path(tmp))
        for rep in range(a.repeats):
            for layout in LAYOUTS:
                print(f"repeat {rep + 1}: {layout} ...", file=sys.stderr, flush=True)
                c_lo, c_hi = count_chain(qemu, plugin, a.rootfs, layout, lo), count_chain(qemu, plugin, a.rootfs, layout, hi)
                per_run[layout].append({k: (c_hi[k] - c_lo[k]) / (hi - lo) for k in c_hi})
        bundled = json.loads((a.rootfs / "root/bundle/bundle.json").read_text())["artifacts"]
        per_token = {}
        for art in bundled:
            print(f"artifact {art['name']}: {a.decode_steps} decode steps ...", file=sys.stderr, flush=True)
            per_token[art["name"]] = {**count_artifact(qemu, plugin, a.rootfs, art["name"], a.decode_steps),
                                      "layout_cpu_arch": art["layout_cpu_arch"]}
    summary = {k: {m: statistics.median(r[m] for r in rows) for m in rows[0]} for k, rows in per_run.items()}
    res = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": CPU, "weights": WEIGHTS,
           "weight_mb_per_run": mb, "runs": [lo, hi], "repeats": a.repeats, "per_run": per_run, "median_per_run": summary,
           "per_decode_token": per_token, "decode_steps": a.decode_steps,
           "qemu": subprocess.run([str(qemu), "--version"], text=True, capture_output=True).stdout.splitlines()[0]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "arm64_layout_counts.json").write_text(json.dumps(res, indent=2) + "\n")
    rows = []
    for k in LAYOUTS:
        s, spread = summary[k], per_run[k]
        moved = (s["load_bytes"] + s["store_bytes"]) / 1e6
        rows.append(f"| {k} | {s['insns'] / 1e6:.1f} | {s['load_bytes'] / 1e6:.1f} | {s['store_bytes'] / 1e6:.1f} | "
                    f"{moved / mb:.2f} | {min(r['load_bytes'] for r in spread) / 1e6:.1f}–{max(r['load_bytes'] for r in spread) / 1e6:.1f} |")
    md = ["# Unpacked layouts on aarch64, counted", "",
          f"{res['date']}; {res['qemu']}, `-cpu {CPU}` (Raspberry Pi 5's core); ONNX Runtime's aarch64 wheel from the "
          f"device bundle (bench/arm64_emulated.py), one thread. {WEIGHTS} chained SmolLM2 MLP weights ({mb:.1f} MB) times "
          f"one token, the layouts of bench/unpacked_layouts.py. Per chain run: the difference between a process running "
          f"{hi} and one running {lo} chains, counted between markers after loading (bench/qemu/counts.c); median of "
          f"{a.repeats} repeats.", "",
          "| layout | instructions (M) | loaded MB | stored MB | bytes moved / weight bytes | loaded MB, repeats |",
          "|---|---|---|---|---|---|", *rows, "",
          "Loads and stores are every guest memory access, caches not modelled: bytes moved per weight byte is what "
          "a bandwidth-bound decode pays for. A layout that stores about one weight's bytes per run copies (packs) the "
          "weight on every call.", "",
          "## The bundled artifacts, per decode token", "",
          f"Each artifact of the device bundle through edgedelta's runtime (bench/arm64_probe.py --count-decode "
          f"{a.decode_steps}), one thread, a 9-token prompt; counted over {a.decode_steps} decode steps after the first.", "",
          "| artifact | laid out for | instructions (M) | loaded MB | stored MB | moved MB |", "|---|---|---|---|---|---|",
          *[f"| {n} | {c['layout_cpu_arch']} | {c['insns'] / 1e6:.1f} | {c['load_bytes'] / 1e6:.0f} | "
            f"{c['store_bytes'] / 1e6:.0f} | {(c['load_bytes'] + c['store_bytes']) / 1e6:.0f} |" for n, c in per_token.items()], ""]
    (RESULTS / "arm64_layout_counts.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
