"""bench/peers_build.py's pure parts: the llama.cpp CPU switches taken from /proc/cpuinfo (never
native, never AMX) and the step cache that makes a rebuild a no-op."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import peers_build  # noqa: E402

CPUINFO = """processor\t: 0
model name\t: Some Xeon
flags\t\t: fpu sse avx avx2 fma f16c bmi2 avx512f avx512bw avx512dq avx512vl avx512_vnni avx512vbmi amx_tile amx_int8 amx_bf16
processor\t: 1
flags\t\t: fpu
"""


def test_cpu_flags_reads_the_first_cpu():
    f = peers_build.cpu_flags(CPUINFO)
    assert {"avx2", "avx512_vnni", "amx_int8"} <= f and "fpu" in f
    assert peers_build.cpu_flags("no flags here") == set()


def test_ggml_flags_follow_the_cpu_and_never_native_or_amx():
    d = peers_build.ggml_cmake_flags(peers_build.cpu_flags(CPUINFO))
    assert d["GGML_NATIVE"] == "OFF"
    assert d["GGML_AMX_TILE"] == d["GGML_AMX_INT8"] == d["GGML_AMX_BF16"] == "OFF"  # present in flags, still off
    assert d["GGML_AVX2"] == d["GGML_AVX512"] == d["GGML_AVX512_VNNI"] == d["GGML_AVX512_VBMI"] == "ON"
    assert d["GGML_AVX512_BF16"] == "OFF" and d["GGML_AVX_VNNI"] == "OFF"  # not in these flags
    assert d["LLAMA_USE_PREBUILT_UI"] == "OFF"  # a download at build time
    plain = peers_build.ggml_cmake_flags({"avx", "avx2", "fma", "f16c"})
    assert plain["GGML_AVX2"] == "ON" and plain["GGML_AVX512"] == "OFF" and plain["GGML_BMI2"] == "OFF"


def test_step_cache_needs_the_same_key_and_every_output(tmp_path, monkeypatch):
    monkeypatch.setattr(peers_build, "WORK", tmp_path)
    out = tmp_path / "out.bin"
    key = {"precision": "int4", "extra_options": {"accuracy_level": "4"}}
    assert not peers_build.cached("step", key, [out])
    peers_build.stamp("step", key)
    assert not peers_build.cached("step", key, [out])  # output missing
    out.write_bytes(b"x")
    assert peers_build.cached("step", key, [out])
    assert not peers_build.cached("step", {**key, "extra_options": {"accuracy_level": "0"}}, [out])


def test_build_table_records_builder_options():
    # the int4 reference: accuracy level 4 and the tied embedding shared as one 4-bit tensor
    precision, extra, ep = peers_build.GENAI_BUILDS["genai-int4"]
    assert precision == "int4" and extra == {"accuracy_level": "4", "shared_embeddings": "true"} and ep == "cpu"
    assert {"genai-int8", "genai-fp32"} <= set(peers_build.GENAI_BUILDS)
    # the CUDA reference: the builder's own CUDA int4 (fp16 activations), options at its defaults
    assert peers_build.GENAI_BUILDS["genai-cuda-int4"] == ("int4", {}, "cuda")


def test_unknown_part_is_refused(capsys):
    assert peers_build.main(["--only", "genai,rocket"]) == 2
    assert "unknown part(s) rocket; allowed: venv, genai, llama, gguf, compressed" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["llama-cli", "llama-server", "llama-quantize", "llama-perplexity", "llama-bench"])
def test_the_serve_benchmark_binary_paths_are_stable(name):
    assert name in peers_build.LLAMA_TARGETS
    assert peers_build.LLAMA_BIN == peers_build.WORK / "llama.cpp" / "bin"
