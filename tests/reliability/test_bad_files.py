"""Bad files, through the CLI: a malformed manifest / config / device / calibration file, a
truncated model.onnx.data, a flipped byte in a weight file, missing shards, a missing
tokenizer, and paths that point outside the folder. Each is a one-line user error (exit 2)
and nothing is written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgedelta.manifest import MANIFEST, read_manifest, write_manifest

from ..tiny import tiny_model, tiny_tokenizer
from .conftest import copy_of
from .test_bad_args import assert_user_error

_KEEP = ("format", "manifest_version", "versions", "files")


def remanifest(folder: Path) -> None:
    """Rewrite the manifest so it matches the (tampered) files: what an attacker or a careless
    copy would do; the checks behind the checksums must still hold."""
    m = read_manifest(folder)
    write_manifest(folder, m["format"], {k: v for k, v in m.items() if k not in _KEEP})


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture()
def box(tmp_path):
    """A workspace of its own for one test; the snapshot covers all of it."""
    return {"ROOT": tmp_path, "NEW": tmp_path / "new-out"}


def uses_of(kind: str) -> list[list[str]]:
    """Commands that read a folder of this kind (placeholder X)."""
    if kind == "artifact":
        return [["inspect", "X"], ["plan", "X", "--device", "rpi5-8gb"], ["run", "X", "--provider", "cpu", "--prompt", "hi"],
                ["eval", "X", "--tasks", "ppl", "--provider", "cpu"]]
    if kind == "compressed":
        return [["export", "X", "--out", "NEW"], ["distill", "X", "--tokens", "64", "--out", "NEW"],
                ["eval", "X", "--tasks", "ppl"]]
    return [["compress", "--model", "X", "--groups", "0-1", "--out", "NEW"], ["export", "X", "--out", "NEW"],
            ["eval", "X", "--tasks", "ppl"]]


def refused_everywhere(kind: str, folder: Path, box: dict, match: str | None = None) -> None:
    for argv in uses_of(kind):
        assert_user_error([str(folder) if a == "X" else a for a in argv], box, match)


# --- integrity: truncation, flipped bytes, missing files ---------------------------------------
def test_truncated_onnx_data(artifact_dir, box):
    art = copy_of(artifact_dir, box["ROOT"] / "art")
    truncate(art / "model.onnx.data")
    refused_everywhere("artifact", art, box, match="model.onnx.data")


def test_truncated_onnx_data_behind_a_rewritten_manifest(artifact_dir, box):
    """Even with a manifest that matches the truncated file, nothing reads past the end."""
    art = copy_of(artifact_dir, box["ROOT"] / "art")
    truncate(art / "model.onnx.data")
    remanifest(art)
    for argv in (["inspect", str(art)], ["run", str(art), "--provider", "cpu", "--prompt", "hi"]):
        assert_user_error(argv, box)


@pytest.mark.parametrize("name", ["model.onnx.data", "model.onnx", "tokenizer.json", "config.json"])
def test_flipped_byte_in_artifact(artifact_dir, box, name):
    art = copy_of(artifact_dir, box["ROOT"] / "art")
    flip_byte(art / name)
    refused_everywhere("artifact", art, box, match=name)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_flipped_byte_in_compressed_model(compressed_dir, box, name):
    comp = copy_of(compressed_dir, box["ROOT"] / "comp")
    flip_byte(comp / name)
    refused_everywhere("compressed", comp, box, match=name)


def test_flipped_byte_in_safetensors_header(plain_dir, box):
    """A plain HF folder has no manifest; a corrupt safetensors header is still a clear error."""
    d = copy_of(plain_dir, box["ROOT"] / "plain")
    flip_byte(d / "model.safetensors", offset=12)
    refused_everywhere("plain", d, box)


def test_missing_shards(box):
    """A sharded HF folder whose index names a shard that is not there."""
    d = box["ROOT"] / "sharded"
    tiny_model().save_pretrained(d, max_shard_size="20KB")
    tiny_tokenizer().save_pretrained(d)
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) > 1 and (d / "model.safetensors.index.json").is_file()
    shards[-1].unlink()
    refused_everywhere("plain", d, box, match="shard")


def test_index_naming_a_shard_outside_the_folder(box, plain_dir):
    d = copy_of(plain_dir, box["ROOT"] / "plain")
    (box["ROOT"] / "outside.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    weight_map = {k: "../outside.safetensors" for k in ("model.embed_tokens.weight",)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    refused_everywhere("plain", d, box, match="outside")


def test_missing_weight_file(compressed_dir, artifact_dir, box):
    comp = copy_of(compressed_dir, box["ROOT"] / "comp")
    (comp / "model.safetensors").unlink()
    refused_everywhere("compressed", comp, box, match="missing")
    art = copy_of(artifact_dir, box["ROOT"] / "art")
    (art / "model.onnx.data").unlink()
    refused_everywhere("artifact", art, box, match="missing")


@pytest.mark.parametrize("kind", ["plain", "compressed", "artifact"])
def test_tokenizer_missing(plain_dir, compressed_dir, artifact_dir, box, kind):
    src = {"plain": plain_dir, "compressed": compressed_dir, "artifact": artifact_dir}[kind]
    d = copy_of(src, box["ROOT"] / kind)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (d / f).unlink(missing_ok=True)
    if kind != "plain":
        remanifest(d)  # a consistent manifest: the loader itself must notice
    uses = uses_of(kind)
    if kind == "artifact":  # inspect and plan need no tokenizer
        uses = [u for u in uses if u[0] in ("run", "eval")]
    for argv in uses:
        assert_user_error([str(d) if a == "X" else a for a in argv], box, match="tokenizer")


# --- malformed manifests -------------------------------------------------------------------------
MANIFESTS = {
    "not json": b"{not json",
    "binary": bytes(range(256)),
    "a list": b"[]",
    "no files table": b'{"format": "x", "manifest_version": 1}',
    "files not a table": b'{"format": "x", "manifest_version": 1, "files": [1, 2]}',
    "future version": None,  # filled from the real manifest
    "names ../x": None,
    "names an absolute path": None,
    "entry not a table": None,
    "empty": b"",
}


def _manifest_variant(real: dict, name: str) -> bytes:
    m = json.loads(json.dumps(real))
    if name == "future version":
        m["manifest_version"] = 99
    elif name == "names ../x":
        m["files"]["../x"] = {"bytes": 2, "sha256": "0" * 64}
    elif name == "names an absolute path":
        m["files"]["/etc/hostname"] = {"bytes": 2, "sha256": "0" * 64}
    elif name == "entry not a table":
        m["files"]["config.json"] = "trust me"
    return json.dumps(m).encode()


@pytest.mark.parametrize("variant", list(MANIFESTS))
@pytest.mark.parametrize("kind", ["compressed", "artifact"])
def test_malformed_manifest(compressed_dir, artifact_dir, box, kind, variant):
    src = compressed_dir if kind == "compressed" else artifact_dir
    d = copy_of(src, box["ROOT"] / kind)
    (box["ROOT"] / "x").write_text("x\n")  # the ../x a manifest may name exists: still refused
    raw = MANIFESTS[variant] if MANIFESTS[variant] is not None else _manifest_variant(read_manifest(src), variant)
    (d / MANIFEST).write_bytes(raw)
    uses = uses_of(kind)
    if kind == "compressed":  # eval/export of a folder whose manifest is unreadable: still refused
        uses = uses[:2]
    for argv in uses:
        assert_user_error([str(d) if a == "X" else a for a in argv], box, match="manifest" if variant != "empty" else None)


def test_symlink_out_of_the_folder_is_refused(artifact_dir, box):
    """A listed file replaced by a symlink to a file outside (with matching content) is refused."""
    art = copy_of(artifact_dir, box["ROOT"] / "art")
    outside = box["ROOT"] / "config-outside.json"
    shutil.move(art / "config.json", outside)
    os.symlink(outside, art / "config.json")
    refused_everywhere("artifact", art, box, match="outside")


def test_external_data_outside_the_artifact(artifact_dir, box):
    """model.onnx naming external data '../outside.bin' (manifest rewritten to match)."""
    import onnx

    art = copy_of(artifact_dir, box["ROOT"] / "art")
    shutil.copy(art / "model.onnx.data", box["ROOT"] / "outside.bin")
    m = onnx.load(str(art / "model.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    (art / "model.onnx").write_bytes(m.SerializeToString())
    (art / "model.onnx.data").unlink()
    remanifest(art)
    for argv in (["inspect", str(art)], ["run", str(art), "--provider", "cpu", "--prompt", "hi"],
                 ["plan", str(art), "--device", "rpi5-8gb"]):
        assert_user_error(argv, box)


# --- config / device / calibration / task / stage files -------------------------------------------
def test_malformed_model_config(plain_dir, compressed_dir, box):
    d = copy_of(plain_dir, box["ROOT"] / "plain")
    (d / "config.json").write_text("{broken")
    refused_everywhere("plain", d, box, match="config.json")
    (d / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    refused_everywhere("plain", d, box)
    comp = copy_of(compressed_dir, box["ROOT"] / "comp")
    cfg = json.loads((comp / "config.json").read_text())
    cfg["edgedelta"]["groups"] = [[0, 9]]  # a sharing spec beyond the model's layers
    (comp / "config.json").write_text(json.dumps(cfg))
    remanifest(comp)
    refused_everywhere("compressed", comp, box)


DEVICE_OK = {"name": "toaster", "kind": "cpu", "memory_gib": 4, "bandwidth_gbps": 10, "cpu_cores": 4}


@pytest.mark.parametrize("content", [
    "{broken", "[]", "null", json.dumps({**DEVICE_OK, "memory_gib": -1}), json.dumps({**DEVICE_OK, "colour": "red"}),
    json.dumps({k: v for k, v in DEVICE_OK.items() if k != "bandwidth_gbps"}), json.dumps({**DEVICE_OK, "name": "other"}),
    json.dumps({**DEVICE_OK, "kind": "quantum"}), json.dumps({**DEVICE_OK, "memory_gib": "lots"}),
    json.dumps({**DEVICE_OK, "cpu_cores": True}), json.dumps({**DEVICE_OK, "schema": 99}),
])
def test_malformed_device_file(artifact_dir, box, content):
    devs = box["ROOT"] / "devs"
    devs.mkdir()
    (devs / "toaster.json").write_text(content)
    assert_user_error(["devices", "--devices-dir", str(devs)], box, match="toaster")
    assert_user_error(["plan", str(artifact_dir), "--device", "toaster", "--devices-dir", str(devs)], box, match="toaster")


def test_non_utf8_device_file(box):
    devs = box["ROOT"] / "devs"
    devs.mkdir()
    (devs / "toaster.json").write_bytes(b"\xff\xfe\x00garbage")
    assert_user_error(["devices", "--devices-dir", str(devs)], box, match="toaster")


@pytest.mark.parametrize("content", [b"{", b"[]", b"\xff\xfe", b'{"format": "edgedelta-calibration", "overhead_bytes": "big"}'])
def test_malformed_calibration_file(artifact_dir, box, content):
    cal = box["ROOT"] / "cal.json"
    cal.write_bytes(content)
    assert_user_error(["plan", str(artifact_dir), "--calibration", str(cal)], box, match="calibration")


@pytest.mark.parametrize("content", [b"{", b"[1]\n", b'{"question": "q"}\n', b"\xff\xfe\n"])
def test_malformed_task_file(plain_dir, box, content):
    f = box["ROOT"] / "tasks.jsonl"
    f.write_bytes(content)
    assert_user_error(["eval", str(plain_dir), "--tasks", "arc_easy", "--task-file", str(f)], box)


def test_corrupt_distill_checkpoint_pointer(compressed_dir, box):
    """--resume with a latest.json that is corrupt or points outside the run folder."""
    out = box["ROOT"] / "out"
    run = box["ROOT"] / "out.run"
    run.mkdir()
    for content in ("{broken", json.dumps({"checkpoint": "../../etc"}), json.dumps({"checkpoint": 5})):
        (run / "latest.json").write_text(content)
        assert_user_error(["distill", str(compressed_dir), "--tokens", "64", "--resume", "--out", str(out)], box)


def test_corrupt_pipeline_stage_record(tmp_path):
    """A corrupt stages.json (the pipeline's resume record) means 'nothing reusable', not a crash."""
    from edgedelta.pipeline import Stages

    for content in (b"{broken", b"[]", b"\xff"):
        (tmp_path / "stages.json").write_bytes(content)
        logs: list[str] = []
        st = Stages(tmp_path, logs.append, total=1)
        assert st.state == {} and any("stages.json" in m for m in logs)
        calls = []
        st.run("one", ["k"], tmp_path / "stages.json", lambda: calls.append(1) or {"ok": True})
        assert calls == [1] and json.loads((tmp_path / "stages.json").read_text())["one"]["result"] == {"ok": True}
