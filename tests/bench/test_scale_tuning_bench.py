"""bench/scale_tuning.py and bench/held_out.py on tiny models: the swapped-in weights are what
is scored, and a run writes JSON and md with a GPTQ row and one row per tuning."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import held_out  # noqa: E402
import scale_tuning as st  # noqa: E402
from tiny import tiny_model, tiny_tokenizer  # noqa: E402
from tiny_compressed import tiny_model_dir  # noqa: E402


def test_held_out_scores_the_swapped_in_weights():
    import torch

    model = tiny_model("llama").eval()
    windows, batches = held_out.held_out_batches(tiny_tokenizer(), 256, batch=2, window=64)
    assert set(windows) == {n for n, _ in batches} and all(x.shape[1] == 64 for _, x in batches)
    ppl, _, ref = held_out.evaluate(model, batches)
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    same, kl_same, _ = held_out.evaluate(model, batches, ref, own)
    assert same == pytest.approx(ppl) and abs(kl_same) < 1e-3  # ref is fp16: KL 0 up to its rounding
    noisy = {n: p + 0.05 * torch.randn_like(p) for n, p in own.items()}
    _, kl_noisy, _ = held_out.evaluate(model, batches, ref, noisy)
    assert kl_noisy > 10 * max(kl_same, 1e-6)
    assert all(torch.equal(p, own[n]) for n, p in model.named_parameters())  # the model keeps its own weights


def test_run_writes_json_and_md(tmp_path):
    src = tiny_model_dir(tmp_path / "tiny", "llama", hidden=64)
    out = tmp_path / "out"
    assert st.main(["--model", str(src), "--rows", "2e-2:3,2e-2:6", "--ppl-tokens", "512", "--out", str(out)]) == 0
    res = json.loads((out / "scale_tuning_tiny.json").read_text())
    assert [(r["lr"], r["steps"]) for r in res["rows"]] == [(None, 0), (2e-2, 3), (2e-2, 6)]
    assert res["export"]["block_size"] == 64 and res["export"]["symmetric"] is True
    assert all(r["kl"] > 0 for r in res["rows"]) and res["rows"][1]["kl"] != res["rows"][0]["kl"]
    md = (out / "scale_tuning_tiny.md").read_text()
    assert "| GPTQ | - | 0 |" in md and "| tuned | 0.02 | 6 |" in md


@pytest.mark.parametrize("argv,match", [(["--rows", "fast"], "LR:STEPS"), (["--rows", "1e-3:0"], "at least 1 step"),
                                        (["--ppl-tokens", "100"], "at least one window")])
def test_bad_arguments_exit_before_any_work(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        st.main(argv)
    assert e.value.code != 0 and match in capsys.readouterr().err
