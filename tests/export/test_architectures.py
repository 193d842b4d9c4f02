"""The architectures edge users bring beyond Llama 2/Qwen2: Llama 3.x (rope scaling
"llama3"), Qwen3 (per-head q/k norms), Gemma 2 (four norms per layer, sliding and global
layers, attention and final logit soft-capping, query_pre_attn_scalar) and Gemma 3 text
(the same plus q/k norms and a local rotary table for sliding layers).

Each goes compress -> export (the exporter's parity checks against PyTorch) -> run (the
runtime's greedy tokens equal PyTorch's) on a tiny random config, with head_dim 8 (the plain
attention graph) and head_dim 16 (GroupQueryAttention). Separate checks show that every
feature changes the model's logits, so parity would catch a graph that ignored it."""

import json

import numpy as np
import pytest
import torch

from edgedelta.delta.compress import compress
from edgedelta.delta.config import CompressConfig
from edgedelta.delta.storage import load_compressed, save_compressed
from edgedelta.errors import ModelLoadError
from edgedelta.export import ExportConfig, export_onnx
from edgedelta.export.arch_facts import ArchFacts
from edgedelta.models.adapters import adapter_for
from edgedelta.runtime import Session, generate_ids
from tests.tiny import TINY_WINDOW, tiny_config, tiny_ids, tiny_model, tiny_tokenizer

NEW_ARCHS = ("llama3", "qwen3", "gemma2", "gemma3_text")
PROMPT = [5, 17, 33, 9, 60, 71, 12, 40, 3, 88, 21]  # 11 tokens: longer than TINY_WINDOW
# max |logit difference| the exports below must stay within (measured: below 1e-6), and the
# least change each feature must make to the tiny models' logits (|logits| ~ 0.2 at init)
PARITY = 1e-5
FEATURE = 10 * PARITY


def _torch_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("hidden,attention", [(32, "plain"), (64, "GroupQueryAttention")])
@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_compress_export_run(arch, hidden, attention, tmp_path):
    model = tiny_model(arch, hidden=hidden)
    cfg = CompressConfig(groups=[[0, 1], [2, 3]], rank_attn=2, rank_mlp=2, init="asvd", gates=True, base="anchor")
    res = compress(model, cfg, calib_ids=tiny_ids(), progress=False)
    src = save_compressed(res.model, tmp_path / "src", tokenizer=tiny_tokenizer())
    art = export_onnx(src, ExportConfig(), tmp_path / "art")
    m = json.loads((art / "manifest.json").read_text())
    assert m["architecture"]["model_type"] == model.config.model_type and m["io"]["attention"] == attention
    for check in ("logits", "logits_with_past"):
        assert m["parity"][check]["max_abs_diff"] <= PARITY
    assert m["parity"]["greedy_decode"]["identical"] and m["parity"]["greedy_decode"]["steps"] == 32
    # run: the runtime's KV-cached greedy decode equals PyTorch's on the compressed model
    ref = _torch_greedy(load_compressed(src).model, PROMPT, 20)
    sess = Session.from_dir(art, provider="cpu", threads=1, tokenizer=None)
    got = generate_ids(sess, [PROMPT], max_new_tokens=20, eos=False)[0].token_ids
    assert got == ref


def _logits_with(model, **changes) -> torch.Tensor:
    """The same weights under a config with `changes`: logits on a 16-token batch."""
    from transformers import AutoModelForCausalLM

    cfg = type(model.config).from_dict({**model.config.to_dict(), **changes})
    other = AutoModelForCausalLM.from_config(cfg, attn_implementation=model.config._attn_implementation)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        return other.eval()(tiny_ids()).logits


@pytest.mark.parametrize("arch,changes", [
    ("llama3", {"rope_scaling": None}),  # the llama3 frequency scaling
    ("gemma2", {"attn_logit_softcapping": None}),
    ("gemma2", {"final_logit_softcapping": None}),
    ("gemma2", {"query_pre_attn_scalar": 8}),  # = head_dim: the default Llama scale
    ("gemma2", {"sliding_window": 64}),  # the window no longer reached
    ("gemma3_text", {"sliding_window": 64}),
    ("gemma3_text", {"rope_local_base_freq": 1_000_000.0}),  # sliding layers' own rotary table
])
def test_each_feature_changes_the_logits(arch, changes):
    """Parity is checked on these tiny configs: each feature must change their logits, or a
    graph that ignored it would still pass."""
    model = tiny_model(arch)
    with torch.no_grad():
        ref = model(tiny_ids()).logits
    assert (_logits_with(model) - ref).abs().max() < 1e-6  # the rebuild itself changes nothing
    assert (_logits_with(model, **changes) - ref).abs().max() > FEATURE


def test_qk_and_post_norms_change_the_logits():
    """q/k norms (Qwen3, Gemma 3) and Gemma's post-attention/post-feed-forward norms."""
    for arch, paths in (("qwen3", ("self_attn.q_norm", "self_attn.k_norm")),
                        ("gemma3_text", ("self_attn.q_norm", "post_attention_layernorm", "post_feedforward_layernorm"))):
        model = tiny_model(arch)
        with torch.no_grad():
            ref = model(tiny_ids()).logits
            for path in paths:
                w = model.model.layers[1].get_submodule(path).weight
                saved = w.clone()
                w.mul_(3.0).add_(0.5)
                assert (model(tiny_ids()).logits - ref).abs().max() > FEATURE, (arch, path)
                w.copy_(saved)


def test_arch_facts_come_from_the_adapter_and_config():
    g3 = tiny_model("gemma3_text", layers=6)
    f = ArchFacts.from_model(g3, adapter_for(g3.config))
    assert f.sliding_windows == (TINY_WINDOW, TINY_WINDOW, None, TINY_WINDOW, TINY_WINDOW, None)
    assert [f.rope_table(i) for i in range(6)] == ["local", "local", "global"] * 2 and f.local_inv_freq != f.inv_freq
    assert f.act == "gelu_pytorch_tanh" and f.embed_scale == pytest.approx(32 ** 0.5)
    assert f.scaling == pytest.approx(24 ** -0.5) and f.attn_softcap is None and f.final_softcap is None
    g2 = tiny_model("gemma2")
    f2 = ArchFacts.from_model(g2, adapter_for(g2.config))
    assert (f2.attn_softcap, f2.final_softcap) == (0.02, 0.5) and f2.sliding_windows == (TINY_WINDOW, None) * 2
    assert g2.config._attn_implementation == "eager"  # sdpa would drop the attention soft-cap
    cfg = tiny_config("mistral")
    cfg.sliding_window = 7
    from transformers import AutoModelForCausalLM

    mi = AutoModelForCausalLM.from_config(cfg)
    assert ArchFacts.from_model(mi, adapter_for(cfg)).sliding_windows == (7,) * 4  # every layer (adapter fact)
    q3 = tiny_model("qwen3")
    assert ArchFacts.from_model(q3, adapter_for(q3.config)).sliding_windows == (None,) * 4


def test_gqa_local_window_is_hf_window():
    """ONNX Runtime's GroupQueryAttention with local_window_size=W attends to the same W keys
    as HF's sliding window (kv_idx > q_idx - W), on a 10-token prefill: the decoder passes
    the config's window unchanged."""
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h

    nh, kvh, hd, s, w = 4, 2, 16, 10, 3
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, s, n * hd)).astype(np.float32) for n in (nh, kvh, kvh))
    vi = h.make_tensor_value_info
    inputs = [vi("q", T.FLOAT, [1, s, nh * hd]), vi("k", T.FLOAT, [1, s, kvh * hd]), vi("v", T.FLOAT, [1, s, kvh * hd]),
              vi("pk", T.FLOAT, [1, kvh, 0, hd]), vi("pv", T.FLOAT, [1, kvh, 0, hd]), vi("sk", T.INT32, [1]), vi("tot", T.INT32, [])]
    node = h.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sk", "tot"], ["o", "pko", "pvo"], domain="com.microsoft",
                       num_heads=nh, kv_num_heads=kvh, local_window_size=w)
    graph = h.make_graph([node], "g", inputs, [vi(n, T.FLOAT, None) for n in ("o", "pko", "pvo")])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    empty = np.zeros((1, kvh, 0, hd), np.float32)
    got = sess.run(None, dict(q=q, k=k, v=v, pk=empty, pv=empty, sk=np.array([s - 1], np.int32), tot=np.array(s, np.int32)))[0]

    def hf_window(window):  # (1, S, nh*hd) by HF's rule, repeat_kv grouping
        qh, kh, vh = q[0].reshape(s, nh, hd), k[0].reshape(s, kvh, hd), v[0].reshape(s, kvh, hd)
        i, j = np.arange(s)[:, None], np.arange(s)[None]
        allowed = (j <= i) & (j > i - window)
        out = np.zeros((s, nh, hd))
        for head in range(nh):
            sc = np.where(allowed, qh[:, head] @ kh[:, head // (nh // kvh)].T * hd ** -0.5, -np.inf)
            p = np.exp(sc - sc.max(-1, keepdims=True))
            out[:, head] = (p / p.sum(-1, keepdims=True)) @ vh[:, head // (nh // kvh)]
        return out.reshape(1, s, nh * hd)

    assert np.abs(got - hf_window(w)).max() < 1e-5
    assert np.abs(got - hf_window(w + 1)).max() > 1e-2  # the off-by-one is visible


def test_unsupported_architecture_refused_before_weights(tmp_path):
    """Gemma 3's multimodal model_type 'gemma3' (not its text model) is refused from the
    config alone: the weights file is garbage and never opened."""
    from edgedelta.loading import load_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}))
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="unsupported architecture 'gemma3'.*gemma3_text"):
        load_model(tmp_path)


def test_adding_a_model_lists_exactly_the_supported_model_types():
    import re
    from pathlib import Path

    from edgedelta.models.adapters import ADAPTERS

    doc = (Path(__file__).resolve().parents[2] / "ADDING_A_MODEL.md").read_text()
    table = doc.split("## Supported architectures", 1)[1].split("\n\n", 2)[1]  # the table: first block after the heading
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.M)[1:]  # after the header row
    assert sorted(listed) == sorted(ADAPTERS)
