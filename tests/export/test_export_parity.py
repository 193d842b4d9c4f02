"""Every supported architecture, plain and compressed, fp32/fp16/int8/int4: the export
validates against PyTorch (logits without and with past, greedy decode) and the audit
finds each shared weight once with one consumer per layer of its group."""

import json

import numpy as np
import pytest
import torch

from edgedelta.export import ExportConfig, audit, build_graph, export_onnx
from tests.tiny import ARCHS
from tests.tiny_compressed import tiny_compressed_dir, tiny_compressed_model, tiny_model_dir


@pytest.mark.parametrize("arch", ARCHS)
def test_compressed_export_matches_pytorch_and_shares(arch, tmp_path):
    src = tiny_compressed_dir(tmp_path / "src", arch, scaled=("q", "up", "qkv", "gate_up"))
    out = export_onnx(src, ExportConfig(), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert m["sharing"]["scaled"]  # per-layer base scales α are exported (one Mul each)
    for check in ("logits", "logits_with_past"):
        assert m["parity"][check]["max_abs_diff"] <= 1e-3
    assert m["parity"]["greedy_decode"]["identical"] and m["parity"]["greedy_decode"]["steps"] == 32
    rep = audit(out)
    assert rep["ok"] and rep["duplicates"] == [] and rep["weights_through_copy_ops"] == []
    n_proj = _stored_projections(m["sharing"]["projections"], m["architecture"]["model_type"])
    assert len(rep["shared"]) == 2 * n_proj  # 2 groups x every (fused) projection, once each
    assert all(s["consumers"] == 2 for s in rep["shared"].values())  # both layers of the group
    deltas = [r for r in rep["initializers"] if r["kind"] == "delta"]
    assert len(deltas) == 2 * 4 * n_proj and all(r["consumers"] == 1 for r in deltas)  # A and B per layer
    # the data file holds the unique parameters once (+ the zeros of the fused block-diagonal
    # delta B's, counted in the manifest, and page-alignment padding)
    zeros = m["parameters"]["block_diagonal_zeros"]
    assert (zeros > 0) == (n_proj < len(m["sharing"]["projections"])) and rep["external_bytes"] <= m["parameters"]["unique_bytes_at_dtype"] + 4 * zeros
    assert rep["data_padding_bytes"] < 4096 * rep["num_initializers"]


def _stored_projections(projections: list[str], arch: str) -> int:
    """Projections stored per layer once q/k/v and gate/up are fused (weights.FUSIONS)."""
    from edgedelta.export.weights import FUSIONS
    from edgedelta.models.adapters import ADAPTERS

    n = len(projections)
    for fused, parts in FUSIONS.items():
        if fused not in ADAPTERS[arch].projections and all(p in projections for p in parts):
            n -= len(parts) - 1
    return n


def test_plain_export_ties_embedding_once(tiny_dirs, tmp_path):
    out = export_onnx(tiny_dirs["plain"], ExportConfig(), tmp_path / "art")
    rep = audit(out)
    emb = [r for r in rep["initializers"] if r["kind"] == "embedding"]
    assert len(emb) == 1 and set(emb[0]["consumer_ops"]) == {"Gather", "FusedMatMul"}
    assert rep["tied_embedding"] == "embed_tokens.weight" and not rep["shared"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["sharing"] is None and m["parameters"]["unique_bytes_at_dtype"] == rep["initializer_bytes"]


def test_fp16_export_within_dtype_tolerance(tmp_path):
    src = tiny_compressed_dir(tmp_path / "src", "qwen2")
    out = export_onnx(src, ExportConfig(dtype="fp16"), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert 0 < m["parity"]["logits"]["max_abs_diff"] <= m["parity"]["logits"]["tolerance"] < 0.05
    rep = audit(out)
    assert {r["dtype"] for r in rep["initializers"] if r["kind"] != "other"} == {"float16"}
    assert m["parameters"]["unique_bytes_at_dtype"] == 2 * m["parameters"]["total"]


@pytest.mark.parametrize("quant,bits,dtype", [("int8", 8, "fp32"), ("int4", 4, "fp32"), ("int4", 4, "fp16")])
def test_quantized_shared_weight_quantized_once(quant, bits, dtype, tmp_path):
    src = tiny_compressed_dir(tmp_path / "src", "llama")
    out = export_onnx(src, ExportConfig(dtype=dtype, quantize=quant, block_size=16), tmp_path / "art")
    rep = audit(out)
    assert rep["ok"]
    rows = {r["name"]: r for r in rep["initializers"]}
    w = rows["shared.g0.mlp.gate_up_proj.weight"]  # gate+up: (128, 32) -> (N=128, 2 blocks, 16*bits/8) uint8
    assert w["dtype"] == "uint8" and w["shape"] == [128, 2, 16 * bits // 8]
    assert w["consumers"] == 2 and w["consumer_ops"] == ["MatMulNBits"]
    assert rows["shared.g0.mlp.gate_up_proj.weight.scales"]["consumers"] == 2
    # deltas quantized too, each layer's own (consumed once)
    a = rows["layers.1.mlp.gate_up_proj.delta_A"]
    assert a["consumer_ops"] == ["MatMulNBits"] and a["consumers"] == 1
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["greedy_decode"]["identical"]
    assert m["ort_session_config"] == {}  # MatMulNBits needs prepacking for speed


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_symmetric_int4_export_stores_no_zero_points(model_type, tmp_path):
    """symmetric: every MatMulNBits reads (x, packed, scales) and uses the kernel's default zero
    point, the dequantizing Gather of a tied table subtracts the same 2^(bits-1), and parity holds."""
    import onnx

    src = tiny_compressed_dir(tmp_path / "src", model_type)
    out = export_onnx(src, ExportConfig(quantize="int4", block_size=16, symmetric=True), tmp_path / "art")
    g = onnx.load(out / "model.onnx", load_external_data=False).graph
    nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
    assert nbits and all(len(n.input) == 3 for n in nbits)
    assert not [t.name for t in g.initializer if t.name.endswith(".zero_points")]
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["symmetric"] and m["parity"]["greedy_decode"]["identical"]
    assert m["parity"]["logits"]["max_abs_diff"] <= m["parity"]["logits"]["tolerance"]


def test_build_graph_does_not_mutate_model():
    model = tiny_compressed_model("phi3")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared_ids = {id(p) for p in model.parameters()}
    build_graph(model, ExportConfig(quantize="int4", block_size=16))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {id(p) for p in model.parameters()} == shared_ids and model.edgedelta_spec is not None


def test_sliding_window_mask_matches_pytorch(tmp_path):
    """Mistral with a window shorter than the parity prompt exercises the window mask."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config, tiny_tokenizer

    torch.manual_seed(0)
    cfg = tiny_config("mistral")
    cfg.sliding_window = 5
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    m = json.loads((export_onnx(tmp_path / "src", ExportConfig(), tmp_path / "art") / "manifest.json").read_text())
    assert m["parity"]["logits"]["max_abs_diff"] <= 1e-3 and m["parity"]["greedy_decode"]["identical"]


@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rotary_node_and_its_decomposition_agree(partial, tmp_path):
    """Opset 23 rotates q and k with one RotaryEmbedding each; opsets 18-22 decompose it.
    Both match PyTorch, also when only part of each head rotates (partial_rotary_factor)."""
    import onnx
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config, tiny_tokenizer

    torch.manual_seed(0)
    cfg = tiny_config("phi3")
    cfg.partial_rotary_factor = partial
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    logits = {}
    for opset in (21, 23):
        art = export_onnx(tmp_path / "src", ExportConfig(opset=opset), tmp_path / f"art{opset}")
        m = json.loads((art / "manifest.json").read_text())
        assert m["parity"]["logits_with_past"]["max_abs_diff"] <= 1e-4 and m["parity"]["greedy_decode"]["identical"]
        nodes = onnx.load(str(art / "model.onnx"), load_external_data=False).graph.node
        ops = [n.op_type for n in nodes if "layers." in n.name]  # the decoder layers' nodes
        assert ops.count("RotaryEmbedding") == (2 * cfg.num_hidden_layers if opset >= 23 else 0)
        assert ops.count("Neg") == (0 if opset >= 23 else 2 * cfg.num_hidden_layers)
        logits[opset] = m["parity"]["logits"]["max_abs_diff"]
    assert logits[23] <= 1e-4 and logits[21] <= 1e-4


def test_identical_tensors_stored_once(tmp_path):
    """Untrained zero deltas (and pair-mean deltas, B₁A₁ = −B₂A₂) hold identical bytes:
    stored once, consumed by every layer, listed as aliases."""
    from edgedelta.delta.layer import DeltaLinear
    from edgedelta.delta.storage import save_compressed
    from tests.tiny import tiny_tokenizer

    model = tiny_compressed_model("llama")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeltaLinear):
                m.delta_B.zero_()
    save_compressed(model, tmp_path / "src", tokenizer=tiny_tokenizer())
    out = export_onnx(tmp_path / "src", ExportConfig(), tmp_path / "art")
    rep = audit(out)
    assert rep["ok"] and rep["duplicates"] == [] and rep["constant_duplicates"] == []
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["aliases"]) > 0 and all(v.endswith("delta_B") for v in m["aliases"].values())
    assert rep["initializer_bytes"] < m["parameters"]["unique_bytes_at_dtype"]


def test_quantized_negated_delta_shares_identical_scales(tmp_path):
    """Pair-mean SVD deltas come as A₂ = −A₁: the packed bytes differ but the block scales
    are identical, so only the scales are stored once (found by the real-model benchmark). With zero
    points: a symmetric scale spans 2^(bits-1) levels below zero and one fewer above, so −A's differ.
    RTN: its scales come from each block's range alone, where GPTQ's are fitted to the Hessian
    of each layer's own input and so differ between the two layers."""
    from edgedelta.delta.storage import save_compressed
    from edgedelta.models.adapters import adapter_for
    from tests.tiny import tiny_tokenizer

    model = tiny_compressed_model("llama")
    layers = adapter_for(model.config).decoder_layers(model)
    with torch.no_grad():
        for proj in ("q_proj", "o_proj"):
            l0, l1 = (getattr(layers[i].self_attn, proj) for i in (0, 1))
            l1.delta_A.copy_(-l0.delta_A)
    save_compressed(model, tmp_path / "src", tokenizer=tiny_tokenizer())
    out = export_onnx(tmp_path / "src", ExportConfig(quantize="int4", block_size=16, symmetric=False, quant_method="rtn"),
                      tmp_path / "art")
    rep = audit(out)
    assert rep["ok"], rep["duplicates"]
    m = json.loads((out / "manifest.json").read_text())
    # o is not fused; q is fused with k and v, whose deltas differ, so its fused A shares nothing
    assert m["aliases"].get("layers.1.self_attn.o_proj.delta_A.scales") == "layers.0.self_attn.o_proj.delta_A.scales"
    assert m["parity"]["greedy_decode"]["identical"]


def test_identical_projection_weights_alias(tmp_path):
    """Two unshared layers with byte-identical projections (a copied layer): one tensor."""
    from transformers import AutoModelForCausalLM

    from tests.tiny import tiny_config, tiny_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with torch.no_grad():
        for proj in ("gate_proj", "up_proj"):  # the fused gate_up of layer 1 equals layer 0's
            getattr(model.model.layers[1].mlp, proj).weight.copy_(getattr(model.model.layers[0].mlp, proj).weight)
    model.save_pretrained(tmp_path / "src")
    tiny_tokenizer().save_pretrained(tmp_path / "src")
    out = export_onnx(tmp_path / "src", ExportConfig(), tmp_path / "art")
    rows = {r["name"]: r for r in audit(out)["initializers"]}
    assert "layers.1.mlp.gate_up_proj.weight" not in rows and rows["layers.0.mlp.gate_up_proj.weight"]["consumers"] == 2


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_int8_activation_compute_within_its_tolerance(quant, tmp_path):
    src = tiny_compressed_dir(tmp_path / "src", "qwen2")
    out = export_onnx(src, ExportConfig(quantize=quant, accuracy_level=4, block_size=16), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["logits"]["max_abs_diff"] <= m["parity"]["logits"]["tolerance"]
    assert m["export_config"]["accuracy_level"] == 4


def test_scale_follows_the_delta_add_and_corner_scales_stay_exact(tmp_path):
    """s = g·α multiplies base + delta (a Mul right after the base MatMul would be fused into
    a FusedMatMul that leaves ONNX Runtime's fast M=1 path); α = 0 and g = 0 still export
    the same function."""
    import onnx

    from edgedelta.delta.layer import DeltaLinear
    from edgedelta.delta.storage import save_compressed
    from tests.tiny import tiny_tokenizer

    model = tiny_compressed_model("llama", scaled=("q", "up"))
    layers = model.model.layers
    with torch.no_grad():
        layers[1].self_attn.q_proj.base_scale.fill_(0.0)  # α = 0: the shared base drops out of layer 1's q
        layers[3].mlp.down_proj.gate.fill_(0.0)  # g = 0: layer 3's MLP contributes nothing
    assert isinstance(layers[1].self_attn.q_proj, DeltaLinear)
    src = save_compressed(model, tmp_path / "src", tokenizer=tiny_tokenizer(128))
    out = export_onnx(src, ExportConfig(), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    for check in ("logits", "logits_with_past"):
        assert m["parity"][check]["max_abs_diff"] <= 1e-3
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    weights = {i.name for i in graph.initializer if i.name.endswith(".weight")}
    base_outputs = {n.output[0] for n in graph.node if n.op_type in ("MatMul", "FusedMatMul") and n.input[1] in weights}
    scales = [n for n in graph.node if n.op_type == "Mul" and any(i.endswith(".scale") for i in n.input)]
    assert len(scales) >= 4
    scale_of = lambda n: next(i for i in n.input if i.endswith(".scale"))  # noqa: E731
    assert [scale_of(n) for n in scales if base_outputs & set(n.input)] == ["layers.1.self_attn.q_proj.scale"]  # only α = 0


def _gate_failing_symmetric(monkeypatch):
    """The quality gate with fixed numbers: the symmetric form misses it, the zero-point form passes."""
    from edgedelta.export import validate
    from edgedelta.export.quality_gate import GateThresholds, judge

    def gate(model, tokenizer, dec, cfg):
        return judge({"ppl_float": 10.0, "ppl_artifact": 14.0 if cfg.symmetric else 11.0, "ppl_ratio": 1.4 if cfg.symmetric else 1.1,
                      "agreement": 0.8, "tokens": 512}, GateThresholds(1.35, 0.7))

    monkeypatch.setattr(validate, "quality_gate", gate)


def test_symmetric_auto_takes_symmetric_blocks_where_they_pass_the_gate(tmp_path):
    import onnx

    out = export_onnx(tiny_model_dir(tmp_path / "src", "llama"), ExportConfig(quantize="int4", block_size=16), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert m["parity"]["quality_gate"]["passed"]
    assert m["export_config"]["symmetric"] is True
    assert m["symmetric_choice"] == {"mode": "auto", "chosen": True, "rejected": []}
    g = onnx.load(out / "model.onnx", load_external_data=False).graph
    assert not [t.name for t in g.initializer if t.name.endswith(".zero_points")]
    # where the time went: each phase of the accepted build, and the calibration passes inside "graph"
    t = m["timing_s"]
    assert set(t["phases"]) == {"graph", "write", "check", "parity", "quality_gate"}
    assert all(v >= 0 for v in t["phases"].values())
    assert sum(t["phases"].values()) <= t["build_and_check"] + 0.01 and t["build_and_check"] <= t["total"]
    assert 0 < t["calibration_passes"] <= t["phases"]["graph"]
    assert m["calibration"]["forward_passes"] >= 1 and m["calibration"]["seconds"] == t["calibration_passes"]


def test_symmetric_auto_falls_back_to_zero_points_when_the_gate_rejects_symmetric(tmp_path, monkeypatch):
    import onnx

    _gate_failing_symmetric(monkeypatch)
    out = export_onnx(tiny_model_dir(tmp_path / "src", "llama"), ExportConfig(quantize="int4", block_size=16), tmp_path / "art")
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["symmetric"] is False and m["parity"]["quality_gate"]["ppl_ratio"] == 1.1
    (rejected,) = m["symmetric_choice"]["rejected"]
    assert rejected["symmetric"] is True and rejected["quality_gate"]["ppl_ratio"] == 1.4 and not rejected["quality_gate"]["passed"]
    g = onnx.load(out / "model.onnx", load_external_data=False).graph
    assert [t.name for t in g.initializer if t.name.endswith(".zero_points")]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("model.onnx")) == ["model.onnx", "model.onnx.data"]


def test_a_set_symmetric_form_is_not_retried(tmp_path, monkeypatch):
    from edgedelta.errors import ParityError

    _gate_failing_symmetric(monkeypatch)
    with pytest.raises(ParityError, match="held_out_perplexity_ratio"):
        export_onnx(tiny_model_dir(tmp_path / "src", "llama"), ExportConfig(quantize="int4", block_size=16, symmetric=True),
                    tmp_path / "art")
    assert not (tmp_path / "art").exists()
    # without a gate to judge it (no validation), auto keeps zero points
    out = export_onnx(tiny_model_dir(tmp_path / "src2", "llama"), ExportConfig(quantize="int4", block_size=16, validate=False),
                      tmp_path / "art2")
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["symmetric"] is False and m["symmetric_choice"]["rejected"] == []


def test_float_zero_point_export(tmp_path):
    """float_zero_points on a compressed model: each projection (and each group's shared base,
    once) is symmetric codes plus an 8-bit offset table read by a second MatMulNBits on the
    input's block sums; deltas and the table keep plain symmetric codes; embedding_bits=8
    puts the tied table and head at 8 bits. Parity against the dequantized weights holds."""
    import onnx

    src = tiny_compressed_dir(tmp_path / "src", "llama")
    cfg = ExportConfig(quantize="int4", block_size=16, float_zero_points=True, embedding_bits=8)
    assert cfg.symmetric is True  # the stored codes are all symmetric
    out = export_onnx(src, cfg, tmp_path / "art")
    g = onnx.load(out / "model.onnx", load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    offsets = sorted(n for n in inits if n.endswith(".offsets"))
    nbits = [n for n in g.node if n.op_type == "MatMulNBits"]
    assert offsets and not any(n.endswith(".zero_points") for n in inits)
    assert not any("delta" in n or "embed" in n for n in offsets)
    readers = [n for n in nbits if n.input[1] in offsets]
    assert len(readers) > len(offsets)  # a shared base's one table is read by every layer of its group
    assert {n.input[0] for n in readers} <= {o for n in g.node if n.op_type == "ReduceSum" for o in n.output}
    head = [n for n in nbits if n.input[1] == "embed_tokens.weight"]
    assert head and {a.i for a in head[0].attribute if a.name == "bits"} == {8}
    rep = audit(out)
    assert rep["ok"], rep["duplicates"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["float_zero_points"] and m["export_config"]["embedding_bits"] == 8
    assert m["parity"]["greedy_decode"]["identical"]
    assert m["parity"]["logits"]["max_abs_diff"] <= m["parity"]["logits"]["tolerance"]


@pytest.mark.parametrize("value_bits", [8, 4])
def test_value_projection_bits(tmp_path, value_bits):
    """value_bits on a compressed int4 model: at 8 q and k are one fused MatMulNBits at 4 bits
    (their shared base one initializer) and v's base and deltas are 8-bit; at 4 (the default:
    the projections' bits) q/k/v are fused where their sharing allows, all at 4 bits. Parity
    against the dequantized weights holds either way."""
    import onnx

    src = tiny_compressed_dir(tmp_path / "src", "llama")
    cfg = ExportConfig(quantize="int4", block_size=16, **({} if value_bits == 4 else {"value_bits": 8}))
    assert cfg.value_bits == value_bits
    out = export_onnx(src, cfg, tmp_path / "art")
    g = onnx.load(out / "model.onnx", load_external_data=False).graph
    bits = {n.input[1]: {a.name: a.i for a in n.attribute}["bits"] for n in g.node if n.op_type == "MatMulNBits"}
    if value_bits == 8:
        assert not any("qkv_proj" in w for w in bits)
        v = {w: b for w, b in bits.items() if "v_proj" in w}
        assert any("shared" in w for w in v) and any("delta" in w for w in v) and set(v.values()) == {8}
        qk = {w: b for w, b in bits.items() if "qk_proj" in w}
        assert any(w.startswith("shared.") for w in qk) and set(qk.values()) == {4}
        assert not any(".q_proj" in w or ".k_proj" in w for w in bits), sorted(bits)
    else:
        assert any("qkv_proj" in w for w in bits) and set(bits.values()) == {4}
    assert audit(out)["ok"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["value_bits"] == value_bits
    assert m["parity"]["greedy_decode"]["identical"]
    assert m["parity"]["logits"]["max_abs_diff"] <= m["parity"]["logits"]["tolerance"]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("embedding_block", [32, 16])
def test_embedding_block_size(tmp_path, arch, embedding_block):
    """embedding_block_size: the table (the lookup and a tied head; an untied head too) in its own
    blocks while the projections keep block_size (64 here); parity holds."""
    import onnx

    assert ExportConfig(quantize="int4").embedding_block_size == 64  # the default: the projections' block
    cfg = ExportConfig(quantize="int4", embedding_block_size=embedding_block)
    assert cfg.block_size == 64 and cfg.embedding_block_size == embedding_block
    out = export_onnx(tiny_model_dir(tmp_path / "src", arch, hidden=64), cfg, tmp_path / "art")
    g = onnx.load(out / "model.onnx", load_external_data=False).graph
    blocks = {n.input[1]: {a.name: a.i for a in n.attribute}["block_size"] for n in g.node if n.op_type == "MatMulNBits"}
    table = {w: b for w, b in blocks.items() if "embed_tokens" in w or "lm_head" in w}
    assert table and set(table.values()) == {cfg.embedding_block_size}
    assert {b for w, b in blocks.items() if w not in table} == {64}
    packed = {i.name: tuple(i.dims) for i in g.initializer}["embed_tokens.weight"]
    assert packed[1:] == (64 // cfg.embedding_block_size, cfg.embedding_block_size // 2)  # (vocab, blocks, block/2 bytes)
    m = json.loads((out / "manifest.json").read_text())
    assert m["export_config"]["embedding_block_size"] == cfg.embedding_block_size
    assert m["parity"]["greedy_decode"]["identical"]
    assert m["parity"]["logits"]["max_abs_diff"] <= m["parity"]["logits"]["tolerance"]


@pytest.mark.parametrize("kw,match", [
    ({"quantize": "int4", "value_bits": 2}, "value_bits must be 4 or 8, got 2"),
    ({"quantize": "int4", "embedding_block_size": 48}, "embedding_block_size must be a power of 2 in 16..256, got 48"),
    ({"quantize": "int8", "embedding_block_size": 8}, "embedding_block_size must be a power of 2 in 16..256, got 8"),
    ({"embedding_block_size": 32}, "embedding_block_size needs a quantized export"),
    ({"value_bits": 8}, "value_bits needs a quantized export"),
    ({"float_zero_points": True}, "quantized export"),
    ({"quantize": "int4", "float_zero_points": True, "symmetric": False}, "symmetric must be auto or on"),
    ({"quantize": "int4", "embedding_bits": 6}, "embedding_bits must be 4 or 8, got 6"),
    ({"embedding_bits": 8}, "quantized export"),
])
def test_float_zero_point_options_refused(kw, match):
    from edgedelta.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        ExportConfig(**kw)
