"""Virtual artifacts: byte accounting from a config + export precision, checked against real
exports of a tiny random Qwen2 (biases, GQA, tied and untied head), and by hand."""

import json

import pytest

from edgedelta.devices import virtual as v
from edgedelta.devices.planner import facts_of, plan_facts
from edgedelta.devices.profile import get
from edgedelta.errors import ConfigError


def _tiny_qwen(tmp_path, tied: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ..tiny_artifact import build_tokenizer

    d = tmp_path / f"qwen-{'tied' if tied else 'untied'}"
    d.mkdir()
    tok = build_tokenizer(d)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # distinct norms and biases: identical tensors would be stored once (exporter dedup)
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(d)
    return d


@pytest.mark.parametrize("tied,precision,symmetric,float_zp,embedding", [
    (True, "fp32", False, False, "same"), (True, "int4", False, False, "same"), (True, "int4", True, False, "same"),
    (False, "int8", False, False, "same"), (True, "int4", None, True, "int8"), (False, "int4", None, True, "int8")])
def test_virtual_matches_a_real_tiny_export(tmp_path, tied, precision, symmetric, float_zp, embedding):
    from edgedelta.export import export_onnx
    from edgedelta.export.config import ExportConfig
    from edgedelta.runtime.artifact import Artifact

    src = _tiny_qwen(tmp_path, tied)
    art_dir = export_onnx(str(src), ExportConfig(quantize="none" if precision == "fp32" else precision, quant_method="rtn",
                                                 validate=False, symmetric=symmetric, float_zero_points=float_zp,
                                                 embedding_bits=None if embedding == "same" else int(embedding[3:])),
                          tmp_path / "art")
    art = Artifact.open(art_dir)
    config = json.loads((src / "config.json").read_text())
    acc = v.account(config, v.VirtualExport(precision, symmetric=bool(symmetric), float_zp=float_zp, embedding=embedding))
    if float_zp:  # the case measures what it names: offset tables are in the graph
        import onnx

        names = {t.name for t in onnx.load(art_dir / "model.onnx", load_external_data=False).graph.initializer}
        assert any(n.endswith(".offsets") for n in names)
    assert acc.stored == art.manifest["audit"]["bytes_by_kind"]
    assert acc.total == art.unique_weight_bytes
    real = art.weight_bytes_read_per_token
    # the graph's Constant nodes (shape vectors, scalars) are read too: a few hundred bytes
    assert 0 <= real - acc.read < 1024, (real, acc.read)
    vf, rf = v.virtual_facts(config, v.VirtualExport(precision), name="x"), facts_of(art)
    for f in ("num_layers", "kv_heads", "head_dim", "kv_itemsize", "vocab_size", "hidden_size", "intermediate_size",
              "num_heads", "max_positions", "kv_buffers", "last_logits_only", "fused_attention"):
        assert getattr(vf, f) == getattr(rf, f), f


@pytest.mark.parametrize("value_bits", [4, 8])
def test_virtual_counts_the_value_projection_at_its_bits(tmp_path, value_bits):
    """ExportConfig.value_bits: v at 8 bits is its own weight beside 4-bit q and k; at 4 (the
    default) q/k/v are one fused weight. The virtual artifact stores what the real export does."""
    from edgedelta.export import export_onnx
    from edgedelta.export.config import ExportConfig
    from edgedelta.runtime.artifact import Artifact

    src = _tiny_qwen(tmp_path, True)
    art = Artifact.open(export_onnx(str(src), ExportConfig(quantize="int4", quant_method="rtn", validate=False, value_bits=value_bits),
                                    tmp_path / "art"))
    acc = v.account(json.loads((src / "config.json").read_text()),
                    v.VirtualExport("int4", **({} if value_bits == 4 else {"value_bits": value_bits})))
    assert acc.stored == art.manifest["audit"]["bytes_by_kind"]
    assert 0 <= art.weight_bytes_read_per_token - acc.read < 1024
    with pytest.raises(ConfigError, match="value_bits 6"):
        v.VirtualExport("int4", value_bits=6)


def test_matrix_bytes_by_hand():
    # (N=320, K=64): fp32 4·N·K; int8 blocks of 32: 2 blocks a row, 1 B codes, fp32 scales, 1 B zero points
    assert v.matrix_bytes(320, 64, "fp32") == 81920
    assert v.matrix_bytes(320, 64, "int8") == 320 * 64 + 320 * 2 * 4 + 320 * 2
    # int4: half-byte codes; zero points two a byte, each row padded to a whole byte
    assert v.matrix_bytes(320, 64, "int4") == 320 * 32 + 320 * 2 * 4 + 320 * 1
    assert v.matrix_bytes(64, 96, "int4") == 64 * 48 + 64 * 3 * 4 + 64 * 2  # 3 blocks: zero points round up
    # K shorter than the block (a delta's B with K = rank 8): block 16, padded
    assert v.matrix_bytes(64, 8, "int4") == 64 * 8 + 64 * 4 + 64
    assert v.matrix_bytes(64, 96, "int4", symmetric=True) == 64 * 48 + 64 * 3 * 4  # symmetric: no zero points


def _qwen05():
    return {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
            "tie_word_embeddings": True}


def test_parameter_count_of_qwen05_matches_upstream():
    assert v.parameter_count(_qwen05()) == 494_032_768  # Qwen2.5-0.5B's published count


def test_sharing_for_budget_meets_the_budget_with_the_fewest_groups():
    cfg = _qwen05()
    ranks = {p: 32 for p in ("q", "k", "v", "o", "gate", "up", "down")}
    sharing, orig, comp = v.sharing_for_budget(cfg, 0.88, ranks)
    assert comp <= 0.88 * orig
    fewer, _, comp_fewer = v.sharing_for_budget(cfg, 0.90, ranks)
    assert fewer.groups <= sharing.groups and comp_fewer > comp
    assert all(sharing.ranks[p] >= 32 for p in ranks)  # slack spent on ranks, never below the start
    # the compressed virtual artifact stores fewer bytes but reads as many weight bytes per token and more
    x0, x1 = v.VirtualExport("int4"), v.VirtualExport("int4", sharing=sharing)
    a0, a1 = v.account(cfg, x0), v.account(cfg, x1)
    assert a1.total < a0.total and a1.read > a0.read


def _qwen15():
    return {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
            "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
            "tie_word_embeddings": False}


def test_compression_turns_does_not_fit_into_tight_for_the_15b_at_int8_on_a_4gb_jetson():
    """A case bench/device_plans.py reports: 1.5B int8 at 2k on a Jetson Orin Nano 4 GB."""
    cfg, dev = _qwen15(), get("jetson-orin-nano-4gb")
    sharing, orig, comp = v.sharing_for_budget(cfg, 0.88, {p: 32 for p in ("q", "k", "v", "o", "gate", "up", "down")})
    assert orig == 1_777_088_000  # the count DESIGN.md measured on the loaded model
    before = plan_facts(v.virtual_facts(cfg, v.VirtualExport("int8")), dev, 2048)
    after = plan_facts(v.virtual_facts(cfg, v.VirtualExport("int8", sharing=sharing)), dev, 2048)
    assert before.verdict == "does not fit" and after.verdict == "tight"
    # what changed is the weights term alone: KV, activations and overhead are the same
    assert before.kv_bytes == after.kv_bytes and before.activation_bytes == after.activation_bytes
    assert before.weights_bytes - after.weights_bytes > 0.1 * before.weights_bytes


def test_bad_precision_is_refused():
    with pytest.raises(ConfigError, match="precision 'int3' is not supported; allowed: fp32, int8, int4"):
        v.VirtualExport("int3")
    with pytest.raises(ConfigError, match="config field 'hidden_size'"):
        v.virtual_facts({"hidden_size": 0}, v.VirtualExport())


def test_virtual_sharing_matches_a_real_tiny_compressed_export(tmp_path):
    """A pair of layers sharing every projection (first-layer base, rank-4 deltas, no gates or
    scales, int4): shared bases once, the second layer's fused q/k/v and gate/up deltas with a
    block-diagonal B. (Gate and base-scale scalars, 4 bytes each, are not modelled.)"""
    import torch

    from edgedelta.delta.compress import compress
    from edgedelta.delta.config import CompressConfig
    from edgedelta.delta.storage import save_compressed
    from edgedelta.export import export_onnx
    from edgedelta.export.config import ExportConfig
    from edgedelta.loading import load_model
    from edgedelta.runtime.artifact import Artifact

    src = _tiny_qwen(tmp_path, tied=True)
    lm = load_model(src)
    cfg = CompressConfig(groups=[[0, 1]], base="first", init="svd", gates=False, scale_base=False, rank_attn=4, rank_mlp=4)
    with torch.no_grad():
        res = compress(lm.model, cfg, progress=False)
    comp = save_compressed(res.model, tmp_path / "comp", tokenizer=lm.tokenizer)
    art = Artifact.open(export_onnx(str(comp), ExportConfig(quantize="int4", quant_method="rtn", validate=False), tmp_path / "art"))
    config = json.loads((src / "config.json").read_text())
    # base 'first': the first layer is the group's anchor (the base itself, no delta)
    sharing = v.VirtualSharing(groups=1, ranks={p: 4 for p in ("q", "k", "v", "o", "gate", "up", "down")}, anchored=True)
    acc = v.account(config, v.VirtualExport("int4", sharing=sharing))
    real = art.manifest["audit"]["bytes_by_kind"]
    for kind in ("shared", "delta", "embedding", "norm", "bias", "other"):
        assert acc.stored.get(kind, 0) == real.get(kind, 0), kind
    assert acc.total == art.unique_weight_bytes
    assert 0 <= art.weight_bytes_read_per_token - acc.read < 1024
