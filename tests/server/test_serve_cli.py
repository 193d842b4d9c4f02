"""`edgedelta serve` refuses bad flags in one line before loading anything; `edgedelta bundle
--service` adds a systemd unit that install.sh fills in for the device."""

import shutil
import socket
import subprocess

import pytest

from edgedelta.cli import main
from edgedelta.devices.bundle import SERVICE_UNIT, BundleConfig, _install_service_sh, build_bundle


@pytest.mark.parametrize("args,msg", [
    (["--port", "0"], "port must be in 1..65535, got 0"),
    (["--port", "http"], "'http' is not a port number"),
    (["--max-batch", "0"], "must be > 0, got 0"),
    (["--max-queue", "-1"], "must be >= 0, got -1"),
    (["--provider", "tpu"], "invalid choice: 'tpu'"),
    (["--drain-seconds", "0"], "must be in (0, 3600] seconds"),
    (["--batch-window-ms", "x"], "'x' is not a number of milliseconds"),
    (["--api-key", "two words"], "API key must be a non-empty string without whitespace"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is not an address"),
])
def test_bad_flag_is_one_line_before_loading(serve_artifact, capsys, args, msg):
    rc = main(["serve", str(serve_artifact), *args])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and err.count("\n") == 1, err


def test_missing_artifact_and_busy_port_are_one_line(serve_artifact, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(serve_artifact), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1


def _fake_fetch(cfg, dest):
    (dest / "edgedelta-0.1.0-py3-none-any.whl").write_bytes(b"wheel")


def test_bundle_service_unit_is_filled_in_by_install_sh(serve_artifact, tmp_path):
    plain = build_bundle([serve_artifact], tmp_path / "plain", BundleConfig("x86_64"), fetch=_fake_fetch)
    assert not (plain / SERVICE_UNIT).exists() and "systemctl" not in (plain / "install.sh").read_text()
    out = build_bundle([serve_artifact], tmp_path / "my bundle", BundleConfig("x86_64", service=True), fetch=_fake_fetch)
    script = (out / "install.sh").read_text()
    assert script.endswith(_install_service_sh()) and "systemctl enable --now edgedelta-serve" in script
    assert "EDGEDELTA_API_KEY=" in (out / "serve.env").read_text()
    # the unit-rendering part of install.sh, run on its own (the rest installs wheels)
    proc = subprocess.run(["sh", "-c", f'here="$1"\n{_install_service_sh()}', "sh", str(out)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    unit = (out / "edgedelta-serve.service").read_text()
    assert "@" not in unit.replace("Environment", "")
    assert f'ExecStart="{out}/venv/bin/edgedelta" serve "{out}/artifacts/{serve_artifact.name}"' in unit
    assert "KillSignal=SIGTERM" in unit and "RestartPreventExitStatus=2" in unit
    assert f"EnvironmentFile=-{out}/serve.env" in unit
    if shutil.which("systemd-analyze"):  # systemd's own parser, where the host has it
        check = subprocess.run(["systemd-analyze", "verify", "--man=no", str(out / "edgedelta-serve.service")],
                               capture_output=True, text=True, timeout=60)
        assert "Unknown" not in check.stderr and "Invalid" not in check.stderr, check.stderr
