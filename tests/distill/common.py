"""Tiny teacher/student pairs for the distillation tests (CPU, milliseconds)."""

from __future__ import annotations

import copy

import torch

from edgedelta.delta.structure import SharingSpec, apply_sharing

from ..tiny import tiny_model

PROJ = ["q", "k", "v", "o", "gate", "up", "down"]


def make_pair(layers: int = 4, groups=((1, 2),), rank: int = 4, seed: int = 0, gates=("o", "down"), arch: str = "llama"):
    """(teacher, student): the student shares each group's projections (base = first
    layer's weight) with small random deltas, so it is clearly worse than the teacher and
    every delta receives gradient (A = B = 0 would be a saddle)."""
    teacher = tiny_model(arch, layers, seed=seed)
    student = copy.deepcopy(teacher)
    spec = SharingSpec([list(g) for g in groups], PROJ, {p: rank for p in PROJ}, list(gates))
    apply_sharing(student, spec)
    student.edgedelta_spec = spec
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in student.modules():
            if hasattr(m, "delta_A"):
                m.delta_A.copy_(0.05 * torch.randn(m.delta_A.shape, generator=g))
                m.delta_B.copy_(0.05 * torch.randn(m.delta_B.shape, generator=g))
    return teacher.eval(), student.eval()


def rows(n: int = 64, seq: int = 16, vocab: int = 128, seed: int = 0) -> torch.Tensor:
    """Token rows with some structure (repeating motifs) so KL can fall quickly."""
    g = torch.Generator().manual_seed(seed)
    motifs = torch.randint(0, vocab, (8, 4), generator=g)
    pick = torch.randint(0, 8, (n, seq // 4), generator=g)
    return motifs[pick].reshape(n, seq)


def make_tokenizer(vocab: int = 128):
    """A word-level tokenizer over 'w0'..'w<vocab-2>' + <eos>, built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<eos>": 0, **{f"w{i}": i + 1 for i in range(vocab - 1)}}
    tk = Tokenizer(models.WordLevel(words, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


def make_text(n_words: int = 4000, vocab: int = 128, seed: int = 0) -> str:
    ids = rows(n_words // 16, 16, vocab - 1, seed).reshape(-1)
    return " ".join(f"w{i}" for i in ids.tolist())
