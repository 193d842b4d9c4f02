"""Refuse early, and do the expected thing (issue cases a new user ran into):
- an output that cannot be created (a path under a FILE) is refused while the arguments are
  parsed, by every command that writes, before any model loads;
- a GGUF file of an unsupported architecture is refused from its header, before transformers
  dequantises a tensor;
- `edgedelta run` applies the artifact's chat template by default (`--raw` opts out);
- `eval --task-file F` alone runs only that file, and the file or `--task-metric` picks acc_norm."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from edgedelta.cli import build_parser
from edgedelta.cli.common import output_dir, output_file
from edgedelta.errors import ConfigError, ModelLoadError
from edgedelta.fsutil import check_output_path

from .test_bad_args import assert_user_error, run_cli


@pytest.fixture()
def box(tmp_path, plain_dir, compressed_dir, artifact_dir):
    (tmp_path / "afile").write_text("a file, not a folder\n")
    return {"ROOT": tmp_path, "PLAIN": plain_dir, "COMP": compressed_dir, "ART": artifact_dir,
            "UNDERFILE": tmp_path / "afile" / "sub", "UNDERFILE_JSON": tmp_path / "afile" / "r.json"}


# --- an output under a file -----------------------------------------------------------------------
WRITERS = [
    ["compress", "--model", "PLAIN", "--groups", "0-1", "--out", "UNDERFILE"],
    ["distill", "COMP", "--tokens", "64", "--out", "UNDERFILE"],
    ["compare", "--model", "PLAIN", "--out", "UNDERFILE"],
    ["export", "PLAIN", "--out", "UNDERFILE"],
    ["bundle", "ART", "--cpu-arch", "x86_64", "--out", "UNDERFILE"],
    ["pipeline", "--model", "PLAIN", "--quick", "--out", "UNDERFILE"],
    ["eval", "PLAIN", "--tasks", "ppl", "--json", "UNDERFILE_JSON"],
    ["profile", "ART", "--json", "UNDERFILE_JSON"],
    ["profile", "ART", "--report", "UNDERFILE"],
    ["plan", "ART", "--json", "UNDERFILE_JSON"],
    ["inspect", "ART", "--json", "UNDERFILE_JSON"],
]


@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: " ".join(a[:1] + [x for x in a if x.startswith("--")][-1:]))
def test_output_under_a_file_is_refused_at_once(argv, box):
    err = assert_user_error(argv, box, match="is a file, not a folder")
    assert str(box["ROOT"] / "afile") in err


def test_every_output_option_is_checked_while_parsing():
    """A command that writes takes its output through output_dir/output_file, so a new command
    cannot forget the check: every --out/--report, and every --json that takes a path."""
    parser = build_parser({})
    sub = next(a for a in parser._actions if a.dest == "command")
    checked = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if {"--out", "--report", "--json"} & set(action.option_strings) and action.nargs != 0:
                assert action.type in (output_dir, output_file), f"{name} {action.option_strings[0]} is not checked early"
                checked.append(f"{name} {action.option_strings[0]}")
    assert len(checked) == len(WRITERS), sorted(checked)  # WRITERS above covers each of them


def test_library_refuses_an_output_under_a_file_before_work(box, monkeypatch):
    from edgedelta.distill.api import distill
    from edgedelta.distill.config import DistillConfig
    from edgedelta.export import ExportConfig, export_onnx
    import edgedelta.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_path(box["UNDERFILE"], force=True)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        export_onnx(box["PLAIN"], ExportConfig(), box["UNDERFILE"])
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        distill(box["COMP"], DistillConfig(tokens=64, seq_len=16, batch_size=4), box["UNDERFILE"] / "deeper")


def test_an_existing_folder_is_not_a_json_output(box):
    assert_user_error(["inspect", "ART", "--json", "ROOT"], box, match="is a folder; give a file name")


# --- GGUF: the architecture from the header -----------------------------------------------------
def _gguf(path: Path, arch: str, tokens: int = 0) -> Path:
    """A GGUF file holding only metadata (and `tokens` vocabulary strings before the architecture
    key, so the reader must skip an array to find it)."""
    import gguf

    w = gguf.GGUFWriter(path, arch)
    if tokens:  # the writer puts general.architecture first; move it after a large array
        w.kv_data[0].pop("general.architecture")
        w.add_token_list([f"tok{i}" for i in range(tokens)])
        w.add_string("general.architecture", arch)
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_architecture_is_read_from_the_header(tmp_path):
    from edgedelta.models.gguf_header import gguf_architecture, gguf_model_type

    assert gguf_architecture(_gguf(tmp_path / "a.gguf", "qwen2")) == "qwen2"
    assert gguf_architecture(_gguf(tmp_path / "b.gguf", "llama", tokens=500)) == "llama"
    assert gguf_model_type(_gguf(tmp_path / "c.gguf", "gemma3")) == "gemma3_text"  # transformers' name for it
    (tmp_path / "d.gguf").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        gguf_architecture(tmp_path / "d.gguf")
    (tmp_path / "e.gguf").write_bytes((tmp_path / "b.gguf").read_bytes()[:200])
    with pytest.raises(ModelLoadError, match="truncated"):
        gguf_architecture(tmp_path / "e.gguf")


def test_unsupported_gguf_is_refused_before_any_tensor_loads(tmp_path, monkeypatch):
    import transformers

    from edgedelta.loading import load_model

    def loads(*a, **k):
        raise AssertionError("transformers was asked to load the GGUF")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", loads)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loads)
    path = _gguf(tmp_path / "bert.gguf", "bert", tokens=100)
    with pytest.raises(ModelLoadError, match=r"unsupported architecture 'bert'; supported: .*llama") as e:
        load_model(path)
    assert str(path) in str(e.value)


def test_unsupported_gguf_on_the_command_line(tmp_path):
    box = {"ROOT": tmp_path, "GGUF": _gguf(tmp_path / "m.gguf", "mamba")}
    assert_user_error(["compress", "--model", "GGUF", "--groups", "0-1", "--out", str(tmp_path / "out")], box,
                      match="unsupported architecture 'mamba'")


# --- run: the chat template by default ------------------------------------------------------------
def _prompt_tokens(argv, box) -> tuple[int, str]:
    code, err = run_cli(argv, box)
    assert code == 0, err
    m = re.search(r"prompt (\d+) tokens.*, (chat template|raw prompt)\]", err[-1])
    assert m, err[-1]
    return int(m.group(1)), m.group(2)


def test_run_applies_the_chat_template_unless_raw(box):
    base = ["run", "ART", "--prompt", "Why does the belt slip?", "--max-new-tokens", "2", "--provider", "cpu"]
    default, how = _prompt_tokens(base, box)
    raw, raw_how = _prompt_tokens(base + ["--raw"], box)
    assert (how, raw_how) == ("chat template", "raw prompt")
    assert default > raw  # the template adds the role markers around the same text
    assert _prompt_tokens(base + ["--chat"], box) == (default, "chat template")  # --chat: same as the default
    assert_user_error(base + ["--chat", "--raw"], box, match="not allowed with argument")


def test_run_without_a_template_uses_the_raw_prompt(box):
    art = Path(shutil.copytree(box["ART"], box["ROOT"] / "art"))
    cfg_path = art / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    (art / "chat_template.jinja").unlink(missing_ok=True)
    _refresh_manifest(art)
    base = ["run", str(art), "--prompt", "hello there", "--max-new-tokens", "2", "--provider", "cpu"]
    default, how = _prompt_tokens(base, box)
    assert how == "raw prompt" and (default, how) == _prompt_tokens(base + ["--raw"], box)
    assert_user_error(base + ["--chat"], box, match="has no chat template")


def _refresh_manifest(art: Path) -> None:
    """The artifact's manifest lists each file's sha256: record the edited tokenizer files."""
    from edgedelta.fsutil import sha256_file

    m = json.loads((art / "manifest.json").read_text())
    for name in list(m["files"]):
        if not (art / name).exists():
            del m["files"][name]
        else:
            m["files"][name] = {**m["files"][name], "bytes": (art / name).stat().st_size, "sha256": sha256_file(art / name)}
    (art / "manifest.json").write_text(json.dumps(m))


# --- eval: a task file alone, and its metric ------------------------------------------------------
def _task_file(path: Path, header: dict | None = None) -> Path:
    lines = [json.dumps(header)] if header else []
    lines += [json.dumps({"question": "Which valve opens at 6 bar?", "choices": ["V3", "the red one on the left"], "answer": 1}),
              json.dumps({"question": "After an emergency stop the belt", "choices": ["restarts", "waits for a reset"], "answer": 1})]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_eval_task_file_alone_runs_only_that_file(box):
    out = box["ROOT"] / "r.json"
    code, err = run_cli(["eval", "PLAIN", "--task-file", str(_task_file(box["ROOT"] / "plant.jsonl")), "--json", str(out),
                         "--no-progress"], box)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert list(res["tasks"]) == ["file:plant"] and res["ppl"] is None and res["config"]["tasks"] == []
    assert res["tasks"]["file:plant"]["primary"] == "acc"


@pytest.mark.parametrize("header,flag,primary", [
    ({"metric": "acc_norm"}, [], "acc_norm"),  # the file chooses
    (None, ["--task-metric", "acc_norm"], "acc_norm"),  # the flag chooses
    ({"metric": "acc_norm"}, ["--task-metric", "acc"], "acc"),  # the flag overrides the file
])
def test_eval_task_metric_from_file_or_flag(box, header, flag, primary):
    out = box["ROOT"] / "r.json"
    tf = _task_file(box["ROOT"] / "plant.jsonl", header)
    code, err = run_cli(["eval", "PLAIN", "--task-file", str(tf), "--json", str(out), "--no-progress", *flag], box)
    assert code == 0, err
    t = json.loads(out.read_text())["tasks"]["file:plant"]
    assert t["primary"] == primary and t["score"] == t[primary]


def test_eval_task_metric_errors(box):
    tf = _task_file(box["ROOT"] / "plant.jsonl", {"metric": "f1"})
    assert_user_error(["eval", "PLAIN", "--task-file", str(tf)], box, match="metric 'f1' is not one of acc, acc_norm")
    late = box["ROOT"] / "late.jsonl"
    late.write_text(_task_file(box["ROOT"] / "ok.jsonl").read_text() + json.dumps({"metric": "acc_norm"}) + "\n")
    assert_user_error(["eval", "PLAIN", "--task-file", str(late)], box, match="must be the file's first line")
    assert_user_error(["eval", "PLAIN", "--tasks", "ppl", "--task-metric", "acc_norm"], box, match="applies to a task file")
