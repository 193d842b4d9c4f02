"""edgedelta.devices: target device profiles (data files in devices/profiles/), the planner
(fits? how fast at most?) and the report.

    from edgedelta import devices
    d = devices.get("rpi5-8gb")
    print(devices.plan("out/model-onnx", d, context=2048))
    # before exporting: a virtual artifact from the config and an export precision
    print(devices.plan_facts(devices.virtual_facts(config_dict, devices.VirtualExport("int4")), d, 2048))
"""

from .planner import Calibration, ModelFacts, Plan, calibrate, calibrate_runs, facts_of, plan, plan_facts
from .profile import Device, all_devices, device_from_dict, get, load_device_file, select
from .virtual import VirtualExport, VirtualSharing, virtual_facts

__all__ = ["Device", "all_devices", "get", "select", "device_from_dict", "load_device_file", "Plan", "ModelFacts",
           "Calibration", "calibrate_runs", "plan", "plan_facts", "facts_of", "calibrate", "VirtualExport", "VirtualSharing",
           "virtual_facts"]
