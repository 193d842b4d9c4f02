"""Generation on a tiny artifact equals PyTorch's greedy generate; streaming equals
non-streaming; sampling is seeded; batches with left padding equal single prompts."""

import numpy as np
import pytest
import torch

from edgedelta.errors import ConfigError
from edgedelta.runtime import GenerationConfig, Session, generate_ids

PROMPTS = ["The pump on line three", "Hello", "Check the pressure valve before restarting"]


@pytest.fixture(scope="module")
def session(edgedelta_artifacts):
    return Session.from_dir(edgedelta_artifacts[1], provider="cpu", threads=1)


@pytest.fixture(scope="module")
def torch_model(edgedelta_artifacts):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(edgedelta_artifacts[0], dtype=torch.float32).eval()


def torch_greedy(model, _tok, prompts, n):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.name_or_path)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:].tolist()


def test_greedy_equals_pytorch(tiny_artifact):
    """Both exporters' graphs (edgedelta.export and optimum) decode like PyTorch."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_artifact[0], dtype=torch.float32).eval()
    sess = Session.from_dir(tiny_artifact[1], provider="cpu", threads=1)
    ref = torch_greedy(model, None, PROMPTS[:1], 24)[0]
    got = sess.generate(PROMPTS[0], max_new_tokens=24, eos=False)
    assert got.token_ids == ref
    assert got.finish_reason == "length" and len(got.token_ids) == 24


def test_batch_left_padding_equals_pytorch_and_single(session, torch_model):
    ref = torch_greedy(torch_model, None, PROMPTS, 12)
    got = session.generate(PROMPTS, max_new_tokens=12, eos=False)
    assert [g.token_ids for g in got] == ref
    singles = [session.generate(p, max_new_tokens=12, eos=False).token_ids for p in PROMPTS]
    assert singles == ref


def test_stream_equals_generate(session):
    full = session.generate(PROMPTS[0], max_new_tokens=30, eos=False)
    st = session.stream(PROMPTS[0], max_new_tokens=30, eos=False)
    pieces = list(st)
    assert "".join(pieces) == full.text
    assert st.result.token_ids == full.token_ids
    seen = []
    session.generate(PROMPTS[0], max_new_tokens=30, eos=False, on_text=lambda r, p: seen.append(p))
    assert "".join(seen) == full.text


def test_stop_string_truncates_and_stream_agrees(session):
    full = session.generate(PROMPTS[0], max_new_tokens=30, eos=False).text
    stop = full[5:8]
    assert stop and full.find(stop) >= 0
    cut = session.generate(PROMPTS[0], max_new_tokens=30, eos=False, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full[: full.find(stop)]
    assert "".join(session.stream(PROMPTS[0], max_new_tokens=30, eos=False, stop=[stop])) == cut.text


def test_eos_stops(session):
    eos = session.tokenizer.eos_token_id
    first = session.generate(PROMPTS[1], max_new_tokens=1).token_ids[0]
    # pretend the first greedy token is EOS: generation ends after one token, reason eos
    session.artifact.generation_config["eos_token_id"] = [eos, first]
    try:
        r = session.generate(PROMPTS[1], max_new_tokens=10)
    finally:
        session.artifact.generation_config["eos_token_id"] = eos
    assert r.token_ids == [first] and r.finish_reason == "eos" and r.text == ""


def test_sampling_seeded_and_topk1_is_greedy(session):
    cfg = GenerationConfig(max_new_tokens=16, do_sample=True, temperature=1.3, top_k=20, top_p=0.9, seed=7, eos=False)
    a, b = session.generate(PROMPTS[0], cfg), session.generate(PROMPTS[0], cfg)
    assert a.token_ids == b.token_ids
    g = session.generate(PROMPTS[0], max_new_tokens=16, eos=False)
    k1 = session.generate(PROMPTS[0], max_new_tokens=16, eos=False, do_sample=True, top_k=1, seed=3)
    assert k1.token_ids == g.token_ids


def test_chat_template_applied(session):
    r = session.generate("hi", chat=True, max_new_tokens=4, eos=False)
    tok = session.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert r.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])


def test_generate_ids_and_all_logits(session, torch_model):
    ids = session.tokenizer(PROMPTS[2])["input_ids"]
    r = generate_ids(session, [ids], max_new_tokens=5, eos=False)[0]
    assert r.token_ids == session.generate(PROMPTS[2], max_new_tokens=5, eos=False).token_ids
    cache = session.new_cache(1, len(ids))
    x = np.array([ids])
    full = session.forward(x, np.ones_like(x), np.arange(len(ids))[None], cache, all_logits=True).copy()
    with torch.no_grad():
        ref = torch_model(torch.tensor(x)).logits.numpy()
    assert np.abs(full - ref).max() < 1e-4


def test_prefill_runs_the_lm_head_on_the_last_position_only(session):
    """edgedelta's graph takes logits_to_keep (default 0: every position, what genai and
    optimum get); Session.forward asks for the last position unless all_logits is set."""
    if session.artifact.manifest.get("exporter", "edgedelta") == "optimum":
        pytest.skip("optimum's graph has no logits_to_keep input")
    ids = session.tokenizer(PROMPTS[1])["input_ids"]
    x = np.array([ids])
    last = session.forward(x, np.ones_like(x), np.arange(len(ids))[None], session.new_cache(1, len(ids))).copy()
    assert session._logits_buf.size == session.artifact.vocab_size  # [1, 1, V] came back, not [1, S, V]
    full = session.forward(x, np.ones_like(x), np.arange(len(ids))[None], session.new_cache(1, len(ids)), all_logits=True)
    np.testing.assert_allclose(last, full[:, -1], atol=1e-5)
    kv = session.kv
    feeds = {i.name: np.zeros((1, kv.kv_heads, 0, kv.head_dim), np.float32)
             for i in session.ort.get_inputs() if i.name.startswith("past_key_values")}
    feeds.update(input_ids=x, attention_mask=np.ones_like(x), position_ids=np.arange(len(ids))[None])
    plain = session.ort.run(["logits"], {k: v for k, v in feeds.items() if k in {i.name for i in session.ort.get_inputs()}})[0]
    assert plain.shape == (1, len(ids), session.artifact.vocab_size)  # a caller that does not know the input


@pytest.mark.parametrize("kw", [dict(max_new_tokens=0), dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(stop=[""])])
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        GenerationConfig(**kw)


def test_bad_prompts(session):
    with pytest.raises(ConfigError, match="empty"):
        session.generate("   ")
    with pytest.raises(ConfigError, match="maximum of 256 positions"):
        session.generate("hello", max_new_tokens=1000)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_prefill_same_tokens(session, chunk):
    full = session.generate(PROMPTS, max_new_tokens=8, eos=False)
    got = session.generate(PROMPTS, max_new_tokens=8, eos=False, prefill_chunk=chunk)
    assert [g.token_ids for g in got] == [f.token_ids for f in full]


def test_prefill_logits_buffer_is_released_at_the_next_decode_step(session):
    """A long prompt's [1, S, V] logits must not stay resident into the next prefill (the
    planner models the logits and the attention peak as phases that never overlap)."""
    ids = session.tokenizer(" ".join(PROMPTS * 4))["input_ids"]
    vocab = session.artifact.vocab_size
    cache = session.new_cache(1, len(ids) + 1)
    x = np.array([ids])
    session.forward(x, np.ones_like(x), np.arange(len(ids))[None], cache, all_logits=True)
    assert session._logits_buf.size == len(ids) * vocab
    step = np.array([[ids[-1]]])
    session.forward(step, np.ones((1, len(ids) + 1), dtype=np.int64), np.array([[len(ids)]]), cache)
    assert session._logits_buf.size == vocab
