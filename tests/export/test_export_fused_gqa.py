"""Graph revision 9 on tiny models with head_dim 16 (hidden 64), where the exporter emits
GroupQueryAttention: q/k/v and gate/up fused into one MatMul each, a group's fused base ONE
initializer read by every layer of the group, deltas as one A and one block-diagonal B, the
quantized embedding table read by a dequantizing Gather and the tied LM head, and the KV cache
updated in place."""

import json

import numpy as np
import onnx
import pytest
import torch

from edgedelta.errors import ConfigError
from edgedelta.export import ExportConfig, export_onnx
from edgedelta.export.exporter import build_graph
from edgedelta.export.validate import check_parity
from tests.tiny import tiny_model
from tests.tiny_compressed import tiny_compressed_dir, tiny_compressed_model


def _readers(model_file) -> dict[str, list[str]]:
    g = onnx.load(str(model_file), load_external_data=False).graph
    inits = {t.name for t in g.initializer}
    out: dict[str, list[str]] = {}
    for n in g.node:
        for x in n.input:
            if x in inits:
                out.setdefault(x, []).append(n.op_type)
    return out


@pytest.fixture(scope="module")
def gqa_compressed(tmp_path_factory):
    root = tmp_path_factory.mktemp("gqa")
    src = tiny_compressed_dir(root / "comp", "llama", hidden=64, scaled=("q", "v", "up"))
    art = export_onnx(src, ExportConfig(), root / "art")
    return src, art


def test_fused_shared_base_is_one_initializer_read_by_every_layer(gqa_compressed):
    _, art = gqa_compressed
    readers = _readers(art / "model.onnx")
    for g in (0, 1):  # tiny_compressed groups [[0,1],[2,3]]: every projection shared
        for name in (f"shared.g{g}.self_attn.qkv_proj.weight", f"shared.g{g}.mlp.gate_up_proj.weight"):
            assert len(readers[name]) == 2, (name, readers[name])
    # no unfused q/k/v base and no separate q/k/v delta remain
    assert not [n for n in readers if ".q_proj." in n or ".k_proj." in n or ".up_proj." in n]
    m = json.loads((art / "manifest.json").read_text())
    assert m["io"]["kv_update"] == "in_place" and m["io"]["attention"] == "GroupQueryAttention"
    ops = [n.op_type for n in onnx.load(str(art / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == 4 and "Transpose" not in ops


def test_fused_deltas_are_block_diagonal(gqa_compressed):
    from onnx import numpy_helper

    _, art = gqa_compressed
    model = onnx.load(str(art / "model.onnx"))  # with the weights
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    a, b = w["layers.1.self_attn.qkv_proj.delta_A"], w["layers.1.self_attn.qkv_proj.delta_B"]
    r, hd = 4, 16  # tiny_compressed rank; q 64 rows, k and v 32 rows each
    assert a.shape == (64, 3 * r) and b.shape == (3 * r, 64 + 32 + 32)
    assert np.all(b[:r, 64:] == 0) and np.all(b[r:2 * r, :64] == 0) and np.all(b[r:2 * r, 96:] == 0) and np.all(b[2 * r:, :96] == 0)
    assert np.abs(b[:r, :64]).max() > 0 and np.abs(b[2 * r:, 96:]).max() > 0
    # scales differ per part (q, v scaled; k not): one (ΣN,) vector
    s = w["layers.1.self_attn.qkv_proj.scale"]
    assert s.shape == (128,) and len(set(np.round(s, 6))) >= 2
    del hd


@pytest.mark.parametrize("quantize", ["none", "int8", "int4"])
def test_plain_and_gqa_graphs_match_pytorch(quantize):
    model = tiny_compressed_model("qwen2", hidden=64, scaled=("k", "gate"))  # qwen2: q/k/v biases, fused too
    for attention in ("gqa", "plain"):
        cfg = ExportConfig(quantize=quantize, attention=attention, accuracy_level=0)
        builder, weights, facts = build_graph(model, cfg)
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            builder.save(d)
            report = check_parity(model, f"{d}/model.onnx", facts, cfg, weights.dequantized)
        assert report["logits"]["max_abs_diff"] <= report["logits"]["tolerance"]
        assert report["greedy_decode"]["steps"] >= 1


def test_mixed_sharing_keeps_parts_apart():
    """q shared, k and v not: q/k/v cannot be one initializer, so they stay three MatMuls
    feeding GroupQueryAttention's query, key and value inputs."""
    from tests.tiny_compressed import tiny_compressed_model as tcm

    model = tcm("llama", hidden=64)
    # undo sharing of k and v in layer 1 by giving it private copies is invasive; instead check
    # the fusability rule on modules directly
    from edgedelta.export.weights import WeightCollector
    from edgedelta.export.graph import GraphBuilder
    from edgedelta.models.adapters import adapter_for

    ad = adapter_for(model.config)
    wc = WeightCollector(model, ad, ExportConfig(), GraphBuilder("g", 23))
    wc.groups = wc._shared_groups(ad.decoder_layers(model))
    layer0 = ad.decoder_layers(model)[0]
    shared = [ad.get_linear(layer0, p) for p in ("q", "k", "v")]
    plain = [ad.get_linear(tiny_model("llama", hidden=64).model.layers[0], p) for p in ("q", "k", "v")]
    assert wc._fusable(shared) and wc._fusable(plain)
    assert not wc._fusable([shared[0], plain[1], plain[2]])  # a shared base with private ones


def test_quantized_embedding_is_read_by_gather_and_lm_head(tmp_path):
    from tests.tiny_compressed import tiny_model_dir

    src = tiny_model_dir(tmp_path / "plain", "llama", hidden=64)
    art = export_onnx(src, ExportConfig(quantize="int4"), tmp_path / "art")
    readers = _readers(art / "model.onnx")
    assert sorted(readers["embed_tokens.weight"]) == ["Gather", "MatMulNBits"]
    assert sorted(readers["embed_tokens.weight.scales"]) == ["Gather", "MatMulNBits"]
    g = onnx.load(str(art / "model.onnx"), load_external_data=False).graph
    emb = next(t for t in g.initializer if t.name == "embed_tokens.weight")
    assert emb.data_type == onnx.TensorProto.UINT8  # no float copy of the table anywhere
    hidden = 64
    assert not [t.name for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [128, hidden]]
    genai = json.loads((art / "genai_config.json").read_text())
    assert genai["search"]["past_present_share_buffer"] is True
    assert genai["model"]["decoder"]["num_hidden_layers"] == 4 and genai["model"]["decoder"]["head_size"] == 16


def test_gqa_refused_where_the_model_cannot_use_it():
    model = tiny_model("llama")  # head_dim 8
    with pytest.raises(ConfigError, match="head_dim 8"):
        build_graph(model, ExportConfig(attention="gqa"))
    with pytest.raises(ConfigError, match="attention 'fast'"):
        ExportConfig(attention="fast")


@pytest.mark.parametrize("attention,quantize", [("gqa", "none"), ("plain", "none"), ("gqa", "int4")])
def test_fp16_keeps_a_tiny_base_scale_out_of_the_delta(attention, quantize):
    """A layer whose shared base barely counts (α ≈ 0, its output the delta's): folding B' = B/α
    would overflow fp16 (here |B/α| ~ 1e6 > 65504) and make the logits NaN. fp16 scales the base
    output alone and keeps B' = g·B: the logits match PyTorch and are finite."""
    import tempfile

    model = tiny_compressed_model("llama", hidden=64, scaled=("q", "k", "v", "down"))
    layer = model.model.layers[1]
    with torch.no_grad():
        for proj in (layer.self_attn.q_proj, layer.mlp.down_proj):  # one fused (q/k/v), one single
            proj.base_scale.fill_(1e-5)
            proj.delta_B.mul_(1000.0)  # the same delta B·A, B 1000x larger: B/α ~ 1e6
            proj.delta_A.div_(1000.0)
    cfg = ExportConfig(dtype="fp16", attention=attention, quantize=quantize, accuracy_level=0)
    builder, weights, facts = build_graph(model, cfg)
    with tempfile.TemporaryDirectory() as d:
        builder.save(d)
        report = check_parity(model, f"{d}/model.onnx", facts, cfg, weights.dequantized)
    assert np.isfinite(report["logits"]["max_abs_diff"])
    assert report["logits"]["max_abs_diff"] <= report["logits"]["tolerance"]
