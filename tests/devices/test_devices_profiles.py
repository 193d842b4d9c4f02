"""Device files: every built-in profile validates; malformed files name the field; users add
a device by dropping a file into a folder named in $EDGEDELTA_DEVICES."""

import json

import pytest

from edgedelta import devices
from edgedelta.devices.profile import BUILTIN_DIR
from edgedelta.errors import ConfigError

REQUIRED = {"rpi5-4gb", "rpi5-8gb", "rpi5-16gb", "jetson-orin-nano-8gb", "jetson-agx-orin-32gb", "jetson-agx-orin-64gb",
            "intel-n100-ipc-16gb", "x86-server", "h200"}

GOOD = dict(schema=1, name="my-box", display_name="My box", kind="cpu", memory_gib=2, os_reserved_gib=0.25,
            bandwidth_gbps=5.0, bandwidth_source="measured with STREAM copy", cpu_cores=2, providers=["cpu"], dtypes=["fp32"])


def test_builtin_profiles_valid():
    devs = devices.all_devices()
    assert REQUIRED <= set(devs)
    for d in devs.values():
        assert d.available_bytes > 0 and d.bandwidth_gbps > 0 and d.bandwidth_source
    assert devs["rpi5-8gb"].memory_gib == 8 and devs["jetson-agx-orin-64gb"].bandwidth_gbps == 204.8
    assert devs["rpi5-8gb"].cpu_arch == devs["jetson-orin-nano-8gb"].cpu_arch == "arm64"
    assert devs["intel-n100-ipc-16gb"].cpu_arch == "x86_64"
    with pytest.raises(Exception):  # frozen
        devs["rpi5-8gb"].memory_gib = 99


def test_unknown_device_lists_known():
    with pytest.raises(ConfigError, match="unknown device 'pi9'.*rpi5-8gb"):
        devices.get("pi9")


def write(tmp_path, obj, name="my-box"):
    (tmp_path / f"{name}.json").write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return tmp_path


def test_user_device_added_by_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDELTA_DEVICES", str(write(tmp_path, GOOD)))
    d = devices.get("my-box")
    assert d.available_bytes == int(1.75 * (1 << 30)) and d.providers == ("cpu",)
    assert "my-box" in devices.all_devices()


@pytest.mark.parametrize("change,field", [
    ({"memory_gib": "8"}, "memory_gib"),
    ({"memory_gib": -1}, "memory_gib"),
    ({"kind": "fpga"}, "kind"),
    ({"providers": ["cpu", "tpu"]}, "providers"),
    ({"dtypes": []}, "dtypes"),
    ({"os_reserved_gib": 3}, "os_reserved_gib"),
    ({"bandwidth_source": " "}, "bandwidth_source"),
    ({"ram": 4}, "ram"),
    ({"cpu_cores": True}, "cpu_cores"),
    ({"peak_bandwidth_gbps": 1.0}, "peak_bandwidth_gbps"),
    ({"name": "other"}, "name"),
    ({"cpu_arch": "riscv64"}, "cpu_arch"),
])
def test_malformed_names_field(tmp_path, change, field):
    write(tmp_path, {**GOOD, **change})
    with pytest.raises(ConfigError, match=f"my-box.json.*'{field}'"):
        devices.all_devices([tmp_path])


def test_missing_field_and_bad_json(tmp_path):
    bad = dict(GOOD)
    del bad["bandwidth_gbps"]
    write(tmp_path, bad)
    with pytest.raises(ConfigError, match="missing field 'bandwidth_gbps'"):
        devices.all_devices([tmp_path])
    write(tmp_path, "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        devices.all_devices([tmp_path])


def test_builtin_files_are_named_by_their_name():
    for f in BUILTIN_DIR.glob("*.json"):
        assert json.loads(f.read_text())["name"] == f.stem


def test_select():
    assert len(devices.select("all")) == len(devices.all_devices())
    assert [d.name for d in devices.select("rpi5-4gb, h200")] == ["rpi5-4gb", "h200"]
    with pytest.raises(ConfigError):
        devices.select(" , ")


def test_report_says_when_an_artifact_is_laid_out_for_another_cpu():
    from edgedelta.devices.report import layout_notes

    devs = devices.all_devices()
    pi, n100 = devs["rpi5-8gb"], devs["intel-n100-ipc-16gb"]
    model = {"name": "delta", "facts": {"cpu_arch": "x86_64"}}
    (note,) = [line for line in layout_notes([model], [pi, n100]) if line]
    assert "rpi5-8gb" in note and "n100" not in note and "--cpu-arch arm64" in note
    assert layout_notes([model], [n100]) == []
    assert layout_notes([{"name": "fp16", "facts": {"cpu_arch": None}}], [pi]) == []  # no arch-specific layout


def test_report_says_a_gpu_is_launch_bound_only_when_a_gpu_is_planned():
    from edgedelta.devices.report import gpu_notes

    devs = devices.all_devices()
    (note,) = [line for line in gpu_notes([devs["rpi5-8gb"], devs["h200"]]) if line]
    assert "h200" in note and "rpi5" not in note and "gpu_runtime.md" in note
    assert gpu_notes([devs["rpi5-8gb"], devs["x86-server"]]) == []
