"""edgedelta/hf_tokenizer.py: one loader for every directory's tokenizer. A Qwen2 directory
saved by transformers 4.57.x loads without the false Mistral-regex warning and tokenizes as
without the flag; a directory without a tokenizer is a ModelLoadError naming it."""

import json
import logging

import pytest

from edgedelta.errors import ModelLoadError
from edgedelta.hf_tokenizer import load_hf_tokenizer


def _big_tokenizer():
    """A word-level tokenizer over 100,001 entries: transformers checks the Mistral regex only
    for vocabularies above 100,000 (as Qwen2.5's 151k)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate("def f(x): return x + 1 # Sarah was a better surgeon".split())}}
    vocab.update({f"w{i}": len(vocab) + i for i in range(100_001 - len(vocab))})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>")


def _dir(tmp_path, model_type):
    tok = _big_tokenizer()
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type, "transformers_version": "4.57.6"}))
    return tok


def test_no_false_mistral_warning_and_same_tokens(tmp_path, caplog):
    from transformers.utils import logging as hf_logging

    ref = _dir(tmp_path, "qwen2")
    hf_logging.enable_propagation()  # transformers' records reach caplog
    try:
        with caplog.at_level(logging.WARNING):
            tok = load_hf_tokenizer(tmp_path)
            (tmp_path / "m").mkdir()
            _dir(tmp_path / "m", "mistral")
            load_hf_tokenizer(tmp_path / "m")  # the Mistral family keeps transformers' own check
    finally:
        hf_logging.disable_propagation()
    assert caplog.text.count("incorrect regex pattern") == 1
    text = "def f(x): return x + 1  # Sarah was a better surgeon"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.pad_token_id is not None


def test_a_directory_without_a_tokenizer_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=f"artifact '{tmp_path}' has no tokenizer"):
        load_hf_tokenizer(tmp_path, "artifact")
