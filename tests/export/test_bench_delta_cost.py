"""bench/delta_cost.py's timing-only graph variants remove what their names say and still run."""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from delta_cost import variant_graph  # noqa: E402


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
        path = compressed_artifact / ".variant_test.onnx"  # beside model.onnx.data, which it reads
        try:
            onnx.save(m, str(path))
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            feeds = {}
            for i in sess.get_inputs():
                shape = [1 if not isinstance(d, int) else d for d in i.shape]
                if i.name.startswith("past_key_values"):
                    shape[2] = 0
                feeds[i.name] = np.zeros(shape, np.float32) if "float" in i.type else np.ones(shape, np.int64)
            logits = sess.run(["logits"], feeds)[0]
            assert np.isfinite(logits).all()
        finally:
            path.unlink(missing_ok=True)
