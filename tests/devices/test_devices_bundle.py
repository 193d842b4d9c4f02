"""Device bundles: layout, hashes and facts; artifacts checked before anything is written; a
layout made for the other CPU family noted; bad input refused in one line; install.sh refuses
the wrong machine or Python before it installs anything. The wheels are stand-ins here (no
network in tests); bench/arm64_emulated.py installs a real bundle on an emulated aarch64."""

import hashlib
import json
import platform
import subprocess
import sys

import pytest

from edgedelta.cli import main
from edgedelta.devices.bundle import BundleConfig, build_bundle
from edgedelta.errors import ConfigError, EdgeDeltaError, IntegrityError
from edgedelta.manifest import verify_manifest

WHEELS = ("edgedelta-0.1.0-py3-none-any.whl", "numpy-2.0.0-cp311-cp311-manylinux_2_28_aarch64.whl")


def fake_fetch(cfg, dest):
    for i, name in enumerate(WHEELS):
        (dest / name).write_bytes(f"wheel {i} for {cfg.cpu_arch}".encode())


def test_bundle_holds_wheels_pinned_by_hash_and_verified_artifacts(tiny_edgedelta, tmp_path):
    art = tiny_edgedelta[1]
    out = build_bundle([art], tmp_path / "b", BundleConfig("arm64"), fetch=fake_fetch)
    wheels = sorted((out / "wheels").iterdir())
    assert [w.name for w in wheels] == sorted(WHEELS)
    pins = (out / "requirements.txt").read_text().splitlines()
    assert pins == [f"edgedelta==0.1.0 --hash=sha256:{hashlib.sha256(wheels[0].read_bytes()).hexdigest()}",
                    f"numpy==2.0.0 --hash=sha256:{hashlib.sha256(wheels[1].read_bytes()).hexdigest()}"]
    verify_manifest(out / "artifacts" / art.name)  # every listed file copied, checksums intact
    facts = json.loads((out / "bundle.json").read_text())
    assert (facts["cpu_arch"], facts["machine"], facts["python"]) == ("arm64", "aarch64", "3.11")
    assert facts["platform_tags"][0] == "manylinux_2_28_aarch64" and facts["platform_tags"][-1] == "manylinux2014_aarch64"
    assert [a["name"] for a in facts["artifacts"]] == [art.name]
    script = (out / "install.sh").read_text()
    assert '"aarch64"' in script and '"3.11"' in script and "--no-index" in script and "--require-hashes" in script
    assert f"artifacts/{art.name}" in (out / "README.md").read_text()


def test_tampered_artifact_refused_before_anything_is_written(artifact_copy, tmp_path):
    (artifact_copy / "config.json").write_text("{}")
    fetched = []
    with pytest.raises(IntegrityError, match="config.json"):
        build_bundle([artifact_copy], tmp_path / "b", BundleConfig("arm64"), fetch=lambda c, d: fetched.append(d))
    assert not fetched and not (tmp_path / "b").exists()


def test_failed_download_leaves_no_bundle(tiny_edgedelta, tmp_path):
    def failing(cfg, dest):
        fake_fetch(cfg, dest)
        raise EdgeDeltaError("'pip download' failed: no matching distribution")

    with pytest.raises(EdgeDeltaError, match="pip download"):
        build_bundle([tiny_edgedelta[1]], tmp_path / "b", BundleConfig("x86_64"), fetch=failing)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary folder


def test_layout_for_the_other_cpu_family_is_noted(artifact_copy, tmp_path):
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest.setdefault("layouts", {})["cpu_arch"] = "x86_64"
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    notes = []
    build_bundle([artifact_copy], tmp_path / "arm", BundleConfig("arm64"), log=notes.append, fetch=fake_fetch)
    assert any("re-export with --cpu-arch arm64" in n for n in notes)
    notes.clear()
    build_bundle([artifact_copy], tmp_path / "x86", BundleConfig("x86_64"), log=notes.append, fetch=fake_fetch)
    assert not any("re-export" in n for n in notes)


@pytest.mark.parametrize("kw,msg", [(dict(cpu_arch="riscv"), "cpu_arch 'riscv' is not one of x86_64, arm64"),
                                    (dict(cpu_arch="arm64", python="3.9"), "python '3.9'"),
                                    (dict(cpu_arch="arm64", python="python3"), "python 'python3'")])
def test_bad_config_names_the_value(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        BundleConfig(**kw)


def test_two_artifacts_with_one_name_refused(tiny_edgedelta, tmp_path):
    with pytest.raises(ConfigError, match="names must differ"):
        build_bundle([tiny_edgedelta[1], tiny_edgedelta[1]], tmp_path / "b", BundleConfig("arm64"), fetch=fake_fetch)


@pytest.mark.parametrize("args,msg", [
    (["--cpu-arch", "arm64", "--python", "2.7"], "python '2.7'"),
    (["--device", "nope"], "unknown device 'nope'"),
    (["--cpu-arch", "mips"], "invalid choice: 'mips'"),
    (["--device", "rpi5-8gb", "--cpu-arch", "arm64"], "not allowed with argument"),
])
def test_cli_bad_input_is_one_line(tiny_edgedelta, tmp_path, capsys, args, msg):
    rc = main(["bundle", str(tiny_edgedelta[1]), *args, "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_cli_refuses_missing_artifact_and_existing_out(tiny_edgedelta, tmp_path, capsys):
    assert main(["bundle", str(tmp_path / "nope"), "--cpu-arch", "arm64", "--out", str(tmp_path / "b")]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    (tmp_path / "b").mkdir()  # refused before any download
    assert main(["bundle", str(tiny_edgedelta[1]), "--cpu-arch", "arm64", "--out", str(tmp_path / "b")]) == 2
    assert "already exists (pass --force" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="install.sh is for Linux devices")
def test_install_sh_refuses_the_wrong_machine_or_python(tiny_edgedelta, tmp_path):
    host_arch = {"x86_64": "x86_64", "aarch64": "arm64"}.get(platform.machine())
    if host_arch is None:
        pytest.skip(f"host machine {platform.machine()} is neither x86_64 nor aarch64")
    other_arch = "arm64" if host_arch == "x86_64" else "x86_64"
    other_python = "3.10" if sys.version_info[:2] != (3, 10) else "3.11"
    for cfg, msg in ((BundleConfig(other_arch), "this bundle is for"),
                     (BundleConfig(host_arch, python=other_python), f"this bundle is for Python {other_python}")):
        out = build_bundle([tiny_edgedelta[1]], tmp_path / cfg.cpu_arch / cfg.python, cfg, fetch=fake_fetch)
        proc = subprocess.run(["sh", str(out / "install.sh")], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
        assert proc.returncode != 0 and msg in proc.stderr
        assert not (out / "venv").exists()
