"""The artifact as a user meets it: optimum loads and generates with it, it is
byte-reproducible, tampering is detected, bad input gives one clear error and leaves
nothing behind, and the CLI wraps it."""

import json
import shutil

import numpy as np
import pytest
import torch

from edgedelta.errors import ConfigError, IntegrityError, ModelLoadError, OutputExistsError, ParityError
from edgedelta.export import ExportConfig, audit, export_onnx
from edgedelta.fsutil import sha256_file
from edgedelta.manifest import verify_manifest


def test_optimum_loads_and_generates_like_pytorch(compressed_artifact, tiny_dirs):
    from optimum.onnxruntime import ORTModelForCausalLM

    from edgedelta.loading import load_model

    ort_model = ORTModelForCausalLM.from_pretrained(compressed_artifact)
    assert ort_model.can_use_cache
    ref = load_model(tiny_dirs["compressed"]).model
    ids = torch.tensor([[5, 17, 42, 99, 3, 64]])
    kw = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=2)
    got = ort_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    want = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
    assert got.tolist() == want.tolist()


def test_manifest_records_configs_and_accounting(compressed_artifact):
    m = json.loads((compressed_artifact / "manifest.json").read_text())
    assert m["format"] == "edgedelta-onnx"
    assert ExportConfig.from_dict(m["export_config"]) == ExportConfig(tune_steps=0)  # auto, resolved: fp32 is not tuned
    assert m["scale_tuning"] is None and m["scale_tuning_choice"] is None
    assert m["sharing"]["groups"] == [[0, 1], [2, 3]] and "compress_config" in m
    assert m["audit"]["ok"] and m["audit"]["duplicated_bytes"] == 0
    assert m["ort_session_config"] == {}  # ORT's default: prepacking on (shared weights kept out, see test_ort_kernels.py)
    assert {"model.onnx", "model.onnx.data", "config.json", "generation_config.json", "tokenizer.json"} <= set(m["files"])
    assert "edgedelta" not in json.loads((compressed_artifact / "config.json").read_text())


def test_same_input_gives_identical_bytes(tiny_dirs, compressed_artifact, tmp_path):
    again = export_onnx(tiny_dirs["compressed"], ExportConfig(validate=False), tmp_path / "again")
    for f in ("model.onnx", "model.onnx.data", "config.json"):
        assert sha256_file(again / f) == sha256_file(compressed_artifact / f)
    # quantized too, and from a copy of the source in another folder
    src2 = shutil.copytree(tiny_dirs["compressed"], tmp_path / "elsewhere")
    q = [export_onnx(src, ExportConfig(quantize="int4", block_size=16, validate=False), tmp_path / f"q{i}")
         for i, src in enumerate((tiny_dirs["compressed"], src2))]
    for f in ("model.onnx", "model.onnx.data", "config.json"):
        assert sha256_file(q[0] / f) == sha256_file(q[1] / f)


def test_tampered_data_file_is_detected(compressed_artifact, tmp_path):
    art = shutil.copytree(compressed_artifact, tmp_path / "art")
    data = bytearray((art / "model.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.onnx.data"):
        verify_manifest(art)


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")]


def test_parity_failure_leaves_nothing(tiny_dirs, tmp_path):
    with pytest.raises(ParityError, match="output 'logits'"):
        export_onnx(tiny_dirs["compressed"], ExportConfig(abs_tol=0.0, rel_tol=0.0), tmp_path / "art")
    assert not (tmp_path / "art").exists() and _leftovers(tmp_path, "art") == []


def test_bad_inputs_give_clear_errors(tiny_dirs, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        export_onnx(tmp_path / "missing", ExportConfig(), tmp_path / "o1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        export_onnx(tmp_path / "empty", ExportConfig(), tmp_path / "o2")
    bad = shutil.copytree(tiny_dirs["plain"], tmp_path / "bad")
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        export_onnx(bad, ExportConfig(), tmp_path / "o3")
    comp = shutil.copytree(tiny_dirs["compressed"], tmp_path / "comp")
    (comp / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(IntegrityError):
        export_onnx(comp, ExportConfig(), tmp_path / "o4")
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputExistsError, match="--force"):
        export_onnx(tiny_dirs["plain"], ExportConfig(), tmp_path / "taken")
    with pytest.raises(ConfigError, match="allowed: none, int8, int4"):
        ExportConfig(quantize="int3")
    with pytest.raises(ConfigError, match="block_size"):
        ExportConfig(quantize="int4", block_size=24)
    with pytest.raises(ConfigError, match="allowed: fp32, fp16"):
        ExportConfig(dtype="bf16")
    with pytest.raises(ConfigError, match="unknown export config field"):
        ExportConfig.from_dict({"dtype": "fp32", "bits": 4})
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_audit_flags_duplicates_and_weight_copies(tmp_path):
    """A hand-made graph with a weight stored twice and one behind a Transpose."""
    from onnx import TensorProto

    from edgedelta.export.graph import GraphBuilder

    b = GraphBuilder("g", 21)
    w = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32)
    x = b.add_input("x", TensorProto.FLOAT, ["n", 32])
    y = b.op("MatMul", [x, b.initializer("layers.0.mlp.up_proj.weight", w)])
    y = b.op("MatMul", [y, b.initializer("layers.1.mlp.up_proj.weight", w.copy())])  # same bytes again
    y = b.op("MatMul", [y, b.op("Transpose", [b.initializer("layers.2.mlp.up_proj.weight", w * 2)])])
    b.op("Relu", [y], outputs=["y"])
    b.add_output("y", TensorProto.FLOAT, ["n", 32])
    b.save(tmp_path)
    rep = audit(tmp_path)
    assert not rep["ok"]
    assert rep["duplicates"] == [["layers.0.mlp.up_proj.weight", "layers.1.mlp.up_proj.weight"]]
    assert rep["duplicated_bytes"] == w.nbytes
    assert rep["weights_through_copy_ops"] == [{"name": "layers.2.mlp.up_proj.weight", "ops": ["Transpose"]}]


def test_cli_export_and_inspect(tiny_dirs, tmp_path, capsys):
    from edgedelta.cli import main

    out = tmp_path / "art"
    assert main(["export", str(tiny_dirs["compressed"]), "--out", str(out), "--quantize", "int8", "--block-size", "16"]) == 0
    assert main(["export", str(tiny_dirs["compressed"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edgedelta export: error: output") and "--force" in err[-1]
    assert main(["inspect", str(out), "--json", str(tmp_path / "audit.json")]) == 0
    text = capsys.readouterr().out
    assert "shared.g1.mlp.down_proj.weight" in text and "audit: OK" in text
    assert json.loads((tmp_path / "audit.json").read_text())["ok"] is True
    assert main(["export", str(tiny_dirs["plain"]), "--out", str(tmp_path / "x"), "--dtype", "bf16"]) == 2
    assert "allowed: fp32, fp16" in capsys.readouterr().err
    sym = tmp_path / "sym"
    assert main(["export", str(tiny_dirs["plain"]), "--out", str(sym), "--quantize", "int4", "--block-size", "16",
                 "--symmetric", "on", "--no-validate"]) == 0
    assert json.loads((sym / "manifest.json").read_text())["export_config"]["symmetric"] is True
    fzp = tmp_path / "fzp"
    assert main(["export", str(tiny_dirs["plain"]), "--out", str(fzp), "--quantize", "int4", "--block-size", "16",
                 "--float-zero-points", "--embedding-bits", "8", "--no-validate"]) == 0
    cfg = json.loads((fzp / "manifest.json").read_text())["export_config"]
    assert cfg["float_zero_points"] is True and cfg["embedding_bits"] == 8 and cfg["symmetric"] is True
    assert "float zero points" in capsys.readouterr().out
    assert main(["export", str(tiny_dirs["plain"]), "--out", str(tmp_path / "y"), "--float-zero-points"]) == 2
    assert "float_zero_points needs a quantized export" in capsys.readouterr().err
    tuned = tmp_path / "tuned"
    assert main(["export", str(tiny_dirs["plain"]), "--out", str(tuned), "--quantize", "int4", "--block-size", "16",
                 "--tune-steps", "2", "--no-validate"]) == 0
    m = json.loads((tuned / "manifest.json").read_text())
    assert m["export_config"]["tune_steps"] == 2 and m["scale_tuning"]["steps"] == 2
    assert "scale tuning: 2 steps, KL to the float model" in capsys.readouterr().out


def test_block_size_default_follows_the_bits():
    """int4 in blocks of 64 (faster MatMulNBits at int8 activations); 32 for int8 and for float
    zero points (a GGUF Q4_1 block); an explicit size is kept."""
    from edgedelta.devices.virtual import VirtualExport

    assert ExportConfig(quantize="int4").block_size == 64
    assert ExportConfig(quantize="int4", float_zero_points=True).block_size == 32
    assert ExportConfig(quantize="int4", symmetric=False).block_size == 64
    assert ExportConfig(quantize="int8").block_size == 32
    assert ExportConfig(quantize="int4", block_size=16).block_size == 16
    assert ExportConfig.from_dict(ExportConfig(quantize="int4").to_dict()).block_size == 64
    # the device planner's virtual exports count the same blocks
    assert VirtualExport("int4", symmetric=True).block_size == 64 and VirtualExport("int4").block_size == 64
    assert VirtualExport("int4", float_zp=True).block_size == 32
    assert VirtualExport("int8").block_size == 32


def test_quantized_parity_at_level_0_allows_accumulation_order():
    """A quantized graph checked at accuracy level 0 gets 1e-4 of the largest reference logit on
    top of fp32's 1e-3 (MatMulNBits accumulates in its own block order); plain fp32 gets none."""
    assert ExportConfig().tolerance(30.0) == pytest.approx(1e-3)
    assert ExportConfig(quantize="int4", accuracy_level=0).tolerance(30.0) == pytest.approx(1e-3 + 30 * 1e-4)
    assert ExportConfig(quantize="int4").tolerance(30.0) == pytest.approx(5e-2 + 30 * 2e-2)  # level 4: int8 activations
