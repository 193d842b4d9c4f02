"""Decode steps with fixed shapes at fixed addresses (Session.static_decode), the form a CUDA
graph replays, and what a CUDA session asks of ONNX Runtime. No GPU here: the static path runs
on the CPU provider, and CUDA session creation is stopped and inspected."""

import numpy as np
import pytest

from edgedelta.errors import ConfigError
from edgedelta.runtime import Session
from edgedelta.runtime.artifact import Artifact
from edgedelta.runtime.session import cuda_unsupported

PROMPTS = ["The pump on line three", "Check the valve"]


@pytest.fixture(scope="module")
def gqa_artifact(tmp_path_factory):
    """A tiny Llama with head_dim 16 exported fp32 (GroupQueryAttention, in-place KV cache)."""
    from tests.tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("static"), hidden=64)[1]


@pytest.fixture(scope="module")
def fp16_gqa_artifact(tmp_path_factory):
    """The same model exported fp16: GroupQueryAttention in the dtype the CUDA kernel takes."""
    from edgedelta.export import ExportConfig, export_onnx
    from tests.tiny_artifact import build_tiny_model_dir

    root = tmp_path_factory.mktemp("static16")
    return export_onnx(build_tiny_model_dir(root / "model", hidden=64), ExportConfig(dtype="fp16"), root / "art")


def _session(path, **kw) -> Session:
    return Session.from_dir(path, provider="cpu", threads=1, spin="off", **kw)


@pytest.mark.parametrize("batch", [1, 2])
def test_static_decode_gives_the_same_tokens(gqa_artifact, batch):
    """Full-width mask and refilled OrtValues: the same greedy tokens as the growing mask, with
    one set of step buffers reused by every step."""
    prompts = PROMPTS[:batch]
    ref = _session(gqa_artifact).generate(prompts, max_new_tokens=12, eos=False)
    s = _session(gqa_artifact)
    s.static_decode = True
    got = s.generate(prompts, max_new_tokens=12, eos=False)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    (step,) = s._static.values()  # one (cache, B) -> one set of OrtValues for all 11 decode steps
    p = max(len(s.tokenizer(x)["input_ids"]) for x in prompts)
    assert step.mask.shape() == [batch, p + 12] and step.logits.shape() == [batch, 1, s.artifact.vocab_size]


def test_static_decode_step_matches_the_growing_mask(gqa_artifact):
    """One step, both ways, from the same prefilled cache: the same logits."""
    s = _session(gqa_artifact)
    ids = np.array([s.tokenizer(PROMPTS[0])["input_ids"]], np.int64)
    p, cap = ids.shape[1], ids.shape[1] + 4
    out = []
    for static in (False, True):
        s.static_decode = static
        cache = s.new_cache(1, cap)
        s.forward(ids, np.ones((1, p), np.int64), np.arange(p)[None], cache)
        mask = np.zeros((1, cap), np.int64)
        mask[:, :p + 1] = 1
        step_mask = mask if static else mask[:, :p + 1]
        out.append(s.forward(np.array([[7]]), step_mask, np.array([[p]]), cache).copy())
    np.testing.assert_allclose(out[1], out[0], atol=1e-5)


def test_cuda_graph_session_reuses_one_cache_per_batch_size(gqa_artifact):
    """A captured graph holds its KV buffers' addresses: a cuda_graph session hands back the
    same cache for a batch size while it is large enough, and names one graph per (cache, B).
    (Built on the CPU provider, which ignores the graph ids: the bookkeeping is what is checked.)"""
    plain = _session(gqa_artifact)
    s = Session(plain.artifact, plain.ort, "cpu", plain.tokenizer, 0.0, cuda_graph=True)
    assert s.static_decode
    a = s.new_cache(1, 32)
    assert s.new_cache(1, 16) is a and s.new_cache(2, 16) is not a
    assert s.new_cache(1, 64) is not a  # too small: replaced
    first = s.generate(PROMPTS[0], max_new_tokens=8, eos=False)
    again = s.generate(PROMPTS[0], max_new_tokens=8, eos=False)
    assert first.token_ids == again.token_ids == plain.generate(PROMPTS[0], max_new_tokens=8, eos=False).token_ids
    assert len(s._static) == 1  # the second generation replayed the first one's step buffers


def test_fp32_gqa_artifact_is_refused_on_cuda(gqa_artifact, monkeypatch, capsys):
    import edgedelta.runtime.session as session_mod

    art = Artifact.open(gqa_artifact)
    assert "--dtype fp16" in cuda_unsupported(art)
    monkeypatch.setattr(session_mod, "resolve_provider", lambda p: "cuda")
    with pytest.raises(ConfigError, match="cannot run on provider 'cuda'.*--dtype fp16"):
        Session.from_dir(gqa_artifact, provider="cuda", tokenizer=None)
    s = Session.from_dir(gqa_artifact, provider="auto", tokenizer=None, threads=1, spin="off")
    assert s.provider == "cpu" and "running on CPU" in capsys.readouterr().err


def test_fp16_gqa_artifact_asks_cuda_for_a_graph(fp16_gqa_artifact, cuda_request):
    assert cuda_unsupported(Artifact.open(fp16_gqa_artifact)) is None
    (name, options), _ = cuda_request(fp16_gqa_artifact, cuda_graph=True)
    assert name == "CUDAExecutionProvider" and options["enable_cuda_graph"] == "1"


def test_fp16_gqa_artifact_generates_on_cpu(fp16_gqa_artifact):
    """The fp16 GroupQueryAttention graph (the CUDA one) runs on the CPU provider too, static or not."""
    s = _session(fp16_gqa_artifact)
    assert s.in_place and s.artifact.attention == "GroupQueryAttention"
    ref = s.generate(PROMPTS, max_new_tokens=8, eos=False)
    s.static_decode = True
    assert [r.token_ids for r in s.generate(PROMPTS, max_new_tokens=8, eos=False)] == [r.token_ids for r in ref]


def test_static_decode_leaves_a_concatenating_cache_alone(tiny_edgedelta):
    """A plain-attention artifact (present = past + new) has no full-width step: static_decode
    changes nothing there."""
    s = _session(tiny_edgedelta[1])
    ref = s.generate(PROMPTS, max_new_tokens=6, eos=False)
    s.static_decode = True
    assert not s.full_width_decode
    assert [r.token_ids for r in s.generate(PROMPTS, max_new_tokens=6, eos=False)] == [r.token_ids for r in ref]
    assert not s._static
