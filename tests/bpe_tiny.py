"""A tiny random Llama with a small byte-level BPE tokenizer, built in memory (no files, no hub),
and its session fixtures; shared by the evaluation and baselines tests through their conftests."""

import pytest
import torch

# tiny matrices: one thread is fastest, and the 2 cores are shared with other runs
torch.set_num_threads(1)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "Question: Which technology was developed most recently?\nAnswer: cellular telephone television",
        "The quick brown fox jumps over the lazy dog. Sarah was a better surgeon than Maria.",
        "def f(x): return x + 1  # python code, numbers 12345 and words",
    ] * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    return tok


def make_model(vocab: int, layers: int = 4, hidden: int = 32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_tok():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tok):
    return make_model(len(tiny_tok))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_model, tiny_tok):
    d = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(d, safe_serialization=True)
    tiny_tok.save_pretrained(d)
    return d
