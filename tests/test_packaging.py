"""Packaging: pyproject.toml lists every subpackage; its extras and edgedelta/extras.py name the
same packages; and a device install (the core dependencies, no extra) runs the device commands
while the workstation commands say which extra they need."""

import json
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from edgedelta.extras import EXTRAS

from .artifact_fixtures import tiny_edgedelta  # noqa: F401  (pytest fixture)

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _dist_name(requirement: str) -> str:
    for sep in "=<>![; ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower().replace("_", "-")


def test_every_subpackage_is_listed():
    tool = PYPROJECT["tool"]["setuptools"]
    found = set()
    for package, folder in tool["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    # a folder mapped on its own (edgedelta.export -> export/) is found under both roots once
    assert found == set(tool["packages"])


def test_extras_name_the_packages_pyproject_installs():
    dists_of = {m: {_dist_name(d) for d in ds} for m, ds in packages_distributions().items()}
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = {_dist_name(r) for r in PYPROJECT["project"]["dependencies"]}
    for extra, modules in EXTRAS.items():
        dists = {_dist_name(r) for r in extras[extra]}
        for module in modules:  # each module comes from a package of its extra
            assert dists_of.get(module, set()) & dists, (extra, module)
        for dist in dists:  # each package of the extra provides a module the CLI knows
            assert any(dist in dists_of.get(m, set()) for m in modules), (extra, dist)
        # the core never pulls an extra's package in
        assert not core & dists, (extra, core & dists)


# Runs in a fresh interpreter in which every module of every extra is absent (sys.modules[m] =
# None makes `import m` raise ModuleNotFoundError and find_spec return None, as when the package
# is not installed). Prints one JSON line: [rc, stderr] per command, in order, and which modules
# of an extra got imported anyway (none should).
_LEAN = """
import contextlib, io, json, sys
from edgedelta.extras import EXTRAS
for modules in EXTRAS.values():
    for m in modules:
        sys.modules[m] = None
from edgedelta.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    out.append([rc, err.getvalue()])
print(json.dumps({"results": out, "real_modules": sorted(m for ms in EXTRAS.values() for m in ms if sys.modules.get(m))}))
"""


def test_device_install_runs_the_device_commands_and_names_the_missing_extra(tiny_edgedelta, tmp_path):
    art = str(tiny_edgedelta[1])
    ok = [["devices"], ["inspect", art], ["run", art, "--prompt", "Hello", "--max-new-tokens", "4", "--provider", "cpu"],
          ["run", art, "--prompt", "Hello", "--chat", "--max-new-tokens", "4", "--provider", "cpu"],
          ["plan", art, "--device", "rpi5-4gb", "--context", "64"],
          ["profile", art, "--device", "rpi5-4gb", "--context", "40", "--new-tokens", "4", "--no-save-calibration"]]
    refused = [(["compress", "--target-params", "0.9", "--out", str(tmp_path / "c")], "compress"),
               (["export", "--help"], "compress"),
               (["pipeline", "--quick", "--out", str(tmp_path / "p")], "compress"),
               (["profile", art, "--context", "40", "--report", str(tmp_path / "rep")], "report")]
    proc = subprocess.run([sys.executable, "-c", _LEAN, json.dumps(ok + [argv for argv, _ in refused])],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["real_modules"] == []  # nothing of an extra was imported by any command
    results = report["results"]
    for argv, (rc, err) in zip(ok, results):
        assert rc == 0, (argv, err)
    for (argv, extra), (rc, err) in zip(refused, results[len(ok):]):
        assert rc == 2 and err.count("\n") == 1 and f"pip install 'edgedelta[{extra}]'" in err, (argv, err)
    assert not any((tmp_path / d).exists() for d in ("c", "p", "rep"))  # refused before any output was made


def test_running_an_artifact_does_not_import_onnx(tiny_edgedelta):
    """`edgedelta run` holds only ONNX Runtime: the onnx package is for the
    exporter, the audit and inspect, which parse the graph."""
    code = ("import contextlib, io, json, sys; from edgedelta.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "    rc = main(json.loads(sys.argv[1]))\n"
            "print(json.dumps([rc, 'onnx' in sys.modules]))")
    argv = ["run", str(tiny_edgedelta[1]), "--prompt", "Hello", "--max-new-tokens", "4", "--provider", "cpu"]
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, False]
