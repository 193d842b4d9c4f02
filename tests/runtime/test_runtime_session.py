"""Loading: checksums verified first (tampering refused naming the file), providers resolved
with clear errors, graph facts read without the weights."""

import json
import subprocess
import sys

import pytest

from edgedelta.errors import ConfigError, IntegrityError, ModelLoadError
from edgedelta.runtime import Artifact, Session, resolve_provider
from edgedelta.runtime.artifact import INTERFACE_KEYS


def test_tampered_weights_refused(artifact_copy):
    data = artifact_copy / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="model.onnx.data"):
        Session.from_dir(artifact_copy, provider="cpu")


def test_truncated_and_missing_refused(artifact_copy):
    (artifact_copy / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        Session.from_dir(artifact_copy, provider="cpu")
    (artifact_copy / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        Artifact.open(artifact_copy)


def test_missing_artifact(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Session.from_dir(tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="manifest"):
        Session.from_dir(tmp_path)


def test_providers(monkeypatch):
    import onnxruntime as ort

    with pytest.raises(ConfigError, match="allowed: auto, cpu, cuda"):
        resolve_provider("tpu")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="'cuda' is not available"):
        resolve_provider("cuda")
    assert resolve_provider("auto") == "cpu"
    assert resolve_provider("cpu") == "cpu"


@pytest.mark.parametrize("tf32,expected", [(True, "1"), (False, "0")])
def test_cuda_session_options(tiny_edgedelta, cuda_request, tf32, expected):
    """What Session.from_dir asks of ORT's CUDA provider. An fp32 GroupQueryAttention artifact
    is refused before that (tests/runtime/test_static_decode.py)."""
    (name, options), fallback = cuda_request(tiny_edgedelta[1], cuda_tf32=tf32)
    assert (name, fallback) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert options["use_tf32"] == expected and options["arena_extend_strategy"] == "kSameAsRequested"
    assert "enable_cuda_graph" not in options


def test_graph_facts(tiny_artifact):
    art = Artifact.open(tiny_artifact[1])
    cfg = json.loads((tiny_artifact[0] / "config.json").read_text())
    kv = art.kv
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert (kv.num_layers, kv.kv_heads, kv.head_dim) == (4, 2, hd)
    assert kv.bytes(10) == 2 * 4 * 2 * 10 * hd * 4
    assert art.vocab_size == cfg["vocab_size"] and art.max_positions == 256
    # tied embedding: stored once, read as a full matrix by lm_head plus one row by the lookup
    emb = cfg["vocab_size"] * cfg["hidden_size"] * 4
    data = (tiny_artifact[1] / "model.onnx.data").stat().st_size  # may include alignment padding
    inline = (tiny_artifact[1] / "model.onnx").stat().st_size  # tensors under 1 KiB stay in the graph file
    assert 0.8 * data <= art.unique_weight_bytes <= data + inline
    assert art.weight_bytes_read_per_token > emb
    assert art.graph_facts["unique_initializer_bytes"] >= art.unique_weight_bytes



def test_session_reads_the_interface_from_ort_without_importing_onnx(edgedelta_artifacts):
    """Running an edgedelta artifact never imports the onnx package (resident memory in the
    process): the KV-cache interface comes from the ORT session, and it equals the graph's."""
    art = edgedelta_artifacts[1]
    code = ("import json, sys; from edgedelta.runtime import Session; s = Session.from_dir(sys.argv[1], provider='cpu'); "
            "print(json.dumps({'onnx': 'onnx' in sys.modules, 'interface': s.artifact.interface}))")
    out = subprocess.run([sys.executable, "-c", code, str(art)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["onnx"] is False
    graph = Artifact.open(art).graph_facts
    assert sorted(res["interface"].pop("inputs")) == sorted(graph["inputs"])
    assert res["interface"] == {k: graph[k] for k in INTERFACE_KEYS if k != "inputs"}


def test_check_decoder_reads_the_manifest_io(artifact_copy):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    Artifact.open(artifact_copy, verify=False).check_decoder()
    manifest["io"]["inputs"] = ["input_ids", "attention_mask"]
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    art = Artifact.open(artifact_copy, verify=False)
    with pytest.raises(ModelLoadError, match="not a KV-cache decoder graph: its manifest lists inputs"):
        art.check_decoder()
    assert "graph_facts" not in vars(art)  # decided without parsing the graph


def test_bytes_read_per_token_counts_one_embedding_row_for_the_lookup(tiny_edgedelta):
    """Every weight is read once per token; the lifted (1, vocab, hidden) table once by the LM
    head and one row by Gather(axis=1). Small shape constants with many readers add a little."""
    art = Artifact.open(tiny_edgedelta[1])
    cfg = json.loads((tiny_edgedelta[0] / "config.json").read_text())
    unique, row = art.graph_facts["unique_initializer_bytes"], 32 * 4
    assert cfg["hidden_size"] == 32
    assert unique + row <= art.weight_bytes_read_per_token <= unique + row + 16 * 1024


def test_kv_cache_buffers(tiny_artifact):
    s = Session.from_dir(tiny_artifact[1], provider="cpu")
    c = s.new_cache(2, 50)
    in_place = Artifact.open(tiny_artifact[1]).manifest.get("io", {}).get("kv_update") == "in_place"
    assert s.in_place == in_place
    # GroupQueryAttention graphs update one buffer in place; the others are double-buffered
    assert c.nbytes() == (1 if in_place else 2) * s.kv.bytes(50, batch=2)


def test_tune_malloc_idempotent():
    import sys

    from edgedelta.runtime.memory import tune_malloc

    assert tune_malloc() == sys.platform.startswith("linux")
    assert tune_malloc() == sys.platform.startswith("linux")


def test_spin_modes(monkeypatch):
    from edgedelta.runtime import session as session_mod

    assert session_mod.resolve_spin("on", 2) is True and session_mod.resolve_spin("off", 2) is False
    assert session_mod.resolve_spin(True, None) is True
    monkeypatch.setattr(session_mod, "available_cores", lambda: 4)
    monkeypatch.setattr(session_mod.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert session_mod.resolve_spin("auto", 2) is True  # idle cores: spin
    assert session_mod.resolve_spin("auto", None) is True
    monkeypatch.setattr(session_mod.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    assert session_mod.resolve_spin("auto", 2) is False  # busy: spinning threads would starve each other
    with pytest.raises(ConfigError, match="spin 'fast'"):
        session_mod.resolve_spin("fast", 2)


def test_spin_reaches_ort_and_bad_spin_is_refused_before_loading(tiny_edgedelta, monkeypatch):
    from edgedelta.runtime import session as session_mod

    art = Artifact.open(tiny_edgedelta[1])
    so = session_mod.artifact_session_options(art, threads=1, spin="on")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert so.intra_op_num_threads == 1
    so = session_mod.artifact_session_options(art, spin="off")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == session_mod.available_cores()  # default: every core we may use
    monkeypatch.setattr(session_mod.Artifact, "open", lambda *a, **k: pytest.fail("loaded before the check"))
    with pytest.raises(ConfigError, match="spin 'sometimes'"):
        Session.from_dir(tiny_edgedelta[1], spin="sometimes")


def test_arena_is_on_and_shrunk_after_each_prefill(tiny_edgedelta):
    """The CPU arena prefills faster than the allocator path (bench/arena.py); a run of more
    than one token ends by shrinking it, so a prefill's activations do not stay resident."""
    import numpy as np

    def runs(**kw):
        s = Session.from_dir(tiny_edgedelta[1], provider="cpu", tokenizer=None, **kw)
        seen, real = [], s.ort

        class Recorder:  # the ORT session, recording the run options of each run
            def __getattr__(self, name):
                return getattr(real, name)

            def run_with_iobinding(self, io, run_options=None):
                seen.append(None if run_options is None else
                            run_options.get_run_config_entry("memory.enable_memory_arena_shrinkage"))
                return real.run_with_iobinding(io, run_options)

        s.ort = Recorder()
        cache, out = s.new_cache(1, 8), []
        for ids in ([[5, 6, 7, 8]], [[9]], [[10, 11]]):
            x, past = np.array(ids, np.int64), cache.length
            mask = np.ones((1, past + x.shape[1]), np.int64)
            out.append(s.forward(x, mask, np.arange(past, past + x.shape[1])[None], cache).copy())
        return seen, out

    seen_on, logits_on = runs()
    assert seen_on == ["cpu:0", None, "cpu:0"]  # the prefill and the 2-token chunk shrink; a decode step does not
    seen_off, logits_off = runs(arena=False)
    assert seen_off == [None, None, None]  # no arena: nothing to shrink (ORT would refuse the option)
    for a, b in zip(logits_on, logits_off):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
