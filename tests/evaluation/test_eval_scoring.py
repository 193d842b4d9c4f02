"""The scorer reproduces lm-eval-harness's loglikelihood rules exactly (checked against a
direct, unbatched computation written out from lm-eval's `_loglikelihood_tokens`)."""

import numpy as np
import torch

from edgedelta.evaluation.scoring import LogitsScorer, Request, TorchScorer, encode_pair


def reference_loglikelihood(model, tok, context, continuation):
    """lm-eval-harness HFLM, one request at a time: joint encoding split at len(ctx)."""
    ctx, cont = encode_pair(tok, context, continuation)
    inp = torch.tensor([(ctx + cont)[:-1]])
    with torch.no_grad():
        logits = torch.log_softmax(model(inp).logits[0].float(), -1)  # (T, V)
    lp = logits[-len(cont):]
    target = torch.tensor(cont)
    return float(lp[torch.arange(len(cont)), target].sum()), bool((lp.argmax(-1) == target).all())


def test_encode_pair_moves_trailing_space_and_splits_jointly(tiny_tok):
    ctx, cont = encode_pair(tiny_tok, "Answer: ", "cellular telephone")
    ctx2, cont2 = encode_pair(tiny_tok, "Answer:", " cellular telephone")
    assert (ctx, cont) == (ctx2, cont2)
    whole = tiny_tok("Answer: cellular telephone", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole


def test_empty_context_uses_prefix_token(tiny_tok):
    ctx, cont = encode_pair(tiny_tok, "", "hello")
    assert ctx == [tiny_tok.eos_token_id] and cont


REQS = [
    Request("Question: Which technology was developed most recently?\nAnswer:", " cellular telephone"),
    Request("Question: Which technology was developed most recently?\nAnswer:", " television"),
    Request("Question: Which technology was developed most recently?\nAnswer:", " the lazy dog jumps"),
    Request("Sarah was a better surgeon than Maria so Sarah", " always got the easier cases."),
    Request("Sarah was a better surgeon than Maria so Maria", " always got the easier cases."),
    Request("x", " y"),
    Request("", "def f(x): return"),
]


def test_packed_scorer_matches_reference(tiny_model, tiny_tok):
    ref = [reference_loglikelihood(tiny_model, tiny_tok, r.context, r.continuation) for r in REQS]
    for batch_tokens in (16, 64, 4096):  # one pack per batch ... everything in one batch
        got = TorchScorer(tiny_model, tiny_tok, batch_tokens=batch_tokens).loglikelihood(REQS)
        for (a, ga), (b, gb) in zip(got, ref):
            assert abs(a - b) < 1e-4 and ga == gb
    got = TorchScorer(tiny_model, tiny_tok, share_context=False).loglikelihood(REQS)
    assert np.allclose([g[0] for g in got], [r[0] for r in ref], atol=1e-4)


def test_logits_scorer_matches_reference(tiny_model, tiny_tok):
    def logits_fn(ids, am):  # what an ONNX session adapter provides
        with torch.no_grad():
            return tiny_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(am)).logits.numpy()

    ref = [reference_loglikelihood(tiny_model, tiny_tok, r.context, r.continuation) for r in REQS]
    got = LogitsScorer(logits_fn, tiny_tok, batch_size=3).loglikelihood(REQS)
    for (a, ga), (b, gb) in zip(got, ref):
        assert abs(a - b) < 1e-4 and ga == gb


def test_left_truncation_at_max_length(tiny_model, tiny_tok):
    long_ctx = "The quick brown fox jumps over the lazy dog. " * 20
    r = Request(long_ctx, " Sarah")
    ctx, cont = encode_pair(tiny_tok, r.context, r.continuation)
    assert len(ctx) > 40
    full = (ctx + cont)[-41:]
    with torch.no_grad():
        lp = torch.log_softmax(tiny_model(torch.tensor([full[:-1]])).logits[0], -1)[-len(cont):]
    expect = float(lp[torch.arange(len(cont)), torch.tensor(cont)].sum())
    got = TorchScorer(tiny_model, tiny_tok, max_length=40).loglikelihood([r])[0][0]
    assert abs(got - expect) < 1e-4


def test_greedy_flag_true_for_models_own_argmax(tiny_model, tiny_tok):
    ctx = tiny_tok("The quick brown", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        nxt = int(tiny_model(torch.tensor([ctx])).logits[0, -1].argmax())
    cont_text = tiny_tok.decode([nxt])
    ids_ctx, ids_cont = encode_pair(tiny_tok, "The quick brown", cont_text)
    if ids_cont == [nxt]:  # the decoded token re-encodes to itself (usual for BPE)
        (_, greedy), = TorchScorer(tiny_model, tiny_tok).loglikelihood([Request("The quick brown", cont_text)])
        assert greedy


def test_packed_scorer_eager_attention(tiny_tok):
    from ..bpe_tiny import make_model

    m = make_model(len(tiny_tok))
    m.config._attn_implementation = "eager"
    ref = [reference_loglikelihood(m, tiny_tok, r.context, r.continuation) for r in REQS]
    got = TorchScorer(m, tiny_tok).loglikelihood(REQS)
    assert np.allclose([g[0] for g in got], [r[0] for r in ref], atol=1e-4)
