"""The profiler's fresh-process measurement imports the installed edgedelta, whatever folder the
caller runs in."""

from edgedelta.runtime.profiler import measure_isolated


def test_measure_isolated_ignores_a_stray_edgedelta_folder(tiny_edgedelta, tmp_path, monkeypatch):
    # `python -m` puts the working directory first on sys.path: from the repository root after a
    # non-editable install, its `edgedelta/` folder (no `runtime`) would shadow the package
    art = tiny_edgedelta[1].resolve()
    stray = tmp_path / "edgedelta"
    stray.mkdir()
    (stray / "__init__.py").write_text("raise ImportError('a stray edgedelta folder was imported')\n")
    monkeypatch.chdir(tmp_path)
    r = measure_isolated(art, 24, new_tokens=4)
    assert r["new_tokens"] == 4 and r["context"] == 24 and r["peak_rss_bytes"] > 0
