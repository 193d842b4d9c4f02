"""An exported ONNX artifact is evaluated through edgedelta.runtime and scores the same as the
PyTorch model it came from (the quality of what is shipped is measured, not assumed)."""

import json

import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    from ..tiny_artifact import build_tiny_artifact

    return build_tiny_artifact(tmp_path_factory.mktemp("tiny-eval-onnx"))


def test_onnx_artifact_scores_like_pytorch(tiny_pair, tmp_path):
    from edgedelta.evaluation.api import EvalConfig, evaluate
    from edgedelta.evaluation.backends import is_onnx_artifact, scorer_for
    from edgedelta.evaluation.scoring import Request

    model_dir, art = tiny_pair
    assert is_onnx_artifact(str(art)) and not is_onnx_artifact(str(model_dir))
    onnx_scorer, src = scorer_for(str(art), provider="cpu")
    torch_scorer, _ = scorer_for(str(model_dir))
    assert src["kind"] == "onnx"
    reqs = [Request("Check the pressure valve", " before restarting"), Request("The pump on line", " three runs"),
            Request("Hello world!", " The quick brown fox")]
    a = onnx_scorer.loglikelihood(reqs)
    b = torch_scorer.loglikelihood(reqs)
    for (la, ga), (lb, gb) in zip(a, b):
        assert abs(la - lb) < 1e-3 and ga == gb
    tf = tmp_path / "items.jsonl"
    tf.write_text("\n".join(json.dumps({"question": q, "choices": c, "answer": 0}) for q, c in [
        ("Check the pressure", ["valve", "fox"]), ("The pump on line", ["three", "Unicode", "torque"])]) + "\n")
    txt = tmp_path / "t.txt"
    txt.write_text("Maintenance log: replaced filter, cleaned sensor, torque 25 Nm. " * 30)
    cfg = EvalConfig(tasks=["ppl"], task_file=str(tf), ppl_texts=[str(txt)], ppl_tokens=128, ppl_seq_len=64)
    ra = evaluate(None, config=cfg, scorer=onnx_scorer)
    rb = evaluate(None, config=cfg, scorer=torch_scorer)
    assert ra["tasks"]["file:items"]["acc"] == rb["tasks"]["file:items"]["acc"]
    assert abs(ra["ppl"][str(txt)]["ppl"] - rb["ppl"][str(txt)]["ppl"]) < 1e-2 * rb["ppl"][str(txt)]["ppl"]
