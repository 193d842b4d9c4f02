"""bench/delta_cost.py's graph variants remove or replace what their names say and still run."""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from delta_cost import quantized_delta_graph, variant_graph  # noqa: E402


def _weights_read(m) -> set[str]:
    inits = {i.name for i in m.graph.initializer}
    return {x for n in m.graph.node for x in n.input if x in inits}


def test_variants_remove_scales_then_deltas_and_run(compressed_artifact):
    model = onnx.load(str(compressed_artifact / "model.onnx"), load_external_data=False)
    before = _weights_read(model)
    assert any(w.endswith(".scale") for w in before) and any(w.endswith(".delta_A") for w in before)
    no_mul, bases = variant_graph(model, "no_scale_mul"), variant_graph(model, "bases_only")
    assert not any(w.endswith(".scale") for w in _weights_read(no_mul))
    assert any(w.endswith(".delta_B") for w in _weights_read(no_mul))
    assert not any(w.endswith((".scale", ".delta_A", ".delta_B")) for w in _weights_read(bases))
    assert len(model.graph.node) > len(no_mul.graph.node) > len(bases.graph.node)
    assert any(w.startswith("shared.") for w in _weights_read(bases))  # the bases stay
    for m in (no_mul, bases):
        assert np.isfinite(_run(compressed_artifact, m)).all()


def test_quantized_deltas_replace_every_delta_matmul(compressed_artifact):
    model = onnx.load(str(compressed_artifact / "model.onnx"), load_external_data=False)
    deltas = [n for n in model.graph.node if n.op_type == "MatMul" and any(x.endswith((".delta_A", ".delta_B")) for x in n.input)]
    assert deltas
    ref = _run(compressed_artifact, model)
    for bits, accuracy in ((4, 0), (8, 4)):
        q = quantized_delta_graph(model, compressed_artifact, bits, accuracy)
        assert not any(w.endswith((".delta_A", ".delta_B")) for w in _weights_read(q))
        nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == len(deltas) and len(q.graph.node) == len(model.graph.node)
        logits = _run(compressed_artifact, q)
        # a quantized delta is still the delta: far closer to the artifact than the logits' own spread
        assert np.abs(logits - ref).max() < 0.1 * np.abs(ref).max()


def _run(art, m) -> np.ndarray:
    """Logits of a one-token forward from an empty cache through graph `m` of artifact `art`."""
    path = art / ".variant_test.onnx"  # beside model.onnx.data, which it reads
    try:
        onnx.save(m, str(path))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {}
        for i in sess.get_inputs():
            shape = [1 if not isinstance(d, int) else d for d in i.shape]
            if i.name.startswith("past_key_values"):
                shape[2] = 0
            feeds[i.name] = np.zeros(shape, np.float32) if "float" in i.type else np.ones(shape, np.int64)
        return sess.run(["logits"], feeds)[0]
    finally:
        path.unlink(missing_ok=True)
