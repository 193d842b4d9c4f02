"""The light tokenizer (no transformers import) agrees with transformers.AutoTokenizer."""

from edgedelta.runtime.session import load_artifact_tokenizer

TEXTS = ["The pump on line three", "Unicode: café 温度 🙂", "  spaced  out ", "<|im_start|>user\nhi<|im_end|>"]


def test_light_equals_hf(tiny_artifact):
    art = tiny_artifact[1]
    light, hf = load_artifact_tokenizer(art, "light"), load_artifact_tokenizer(art, "hf")
    assert type(light).__name__ == "LightTokenizer"
    for t in TEXTS:
        for special in (True, False):
            assert light(t, add_special_tokens=special)["input_ids"] == hf(t, add_special_tokens=special)["input_ids"]
        ids = hf(t)["input_ids"]
        for skip in (True, False):
            assert light.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id"):
        assert getattr(light, attr) == getattr(hf, attr)
    msgs = [{"role": "user", "content": "hi there"}]
    for gen in (True, False):
        assert light.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen) == hf.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=gen)
    assert len(light) == len(hf)
