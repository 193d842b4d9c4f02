"""Loading a Hugging Face tokenizer from a model or artifact directory, the one way every stage
does it: a missing or unreadable tokenizer is a ModelLoadError naming the directory, and a
tokenizer without a pad token pads with its EOS.

transformers 4.57.3+ warns that any tokenizer saved by a 4.57.x version it cannot rule out as a
Mistral one "will lead to incorrect tokenization" (its check reads only the config's
transformers_version), so every Qwen2.5 directory edgedelta writes drew that warning. For a
model type outside the Mistral family the flag is passed as False, which is what the
tokenizer does anyway, and the false warning goes away; a Mistral-family directory keeps
transformers' own behaviour."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelLoadError

MISTRAL_FAMILY = ("mistral", "mistral3", "voxtral", "ministral", "pixtral")  # the types transformers' check names
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_hf_tokenizer(path: str | Path, what: str = "model directory"):
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{what} '{path}' has no tokenizer ({', '.join(TOKENIZER_FILES)})")
    kwargs = {"local_files_only": True}
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type is not None and model_type not in MISTRAL_FAMILY:
        kwargs["fix_mistral_regex"] = False
    try:
        tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer in '{path}': {type(e).__name__}: {e}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
