"""The `pixelserve` console script: `pixelserve serve` and `pixelserve predict` are `python -m service`'s two commands."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import service.__main__ as cli

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_installs_the_pixelserve_script_under_the_one_name():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "pixelserve"
    assert project["scripts"] == {"pixelserve": "service.__main__:cli"}


def test_serve_runs_what_python_m_service_runs(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "serve", lambda args: seen.append(args) or 0)
    assert cli.cli(["serve", "--port", "9123", "--workers", "1"]) == 0
    assert cli.main(["--port", "9123", "--workers", "1"]) == 0
    assert seen[0] == seen[1] and seen[0].port == 9123


def test_predict_runs_the_client(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cli, "predict", lambda args: seen.append(args) or 0)
    picture = tmp_path / "digit.png"
    assert cli.cli(["predict", "--model", "mnist-convnet", str(picture)]) == 0
    assert seen[0].model == "mnist-convnet" and seen[0].pictures == [picture]


@pytest.mark.parametrize("argv, prog", [(["serve", "--help"], "usage: pixelserve serve"),
                                        (["predict", "--help"], "usage: pixelserve predict"),
                                        (["import", "--help"], "usage: pixelserve import")])
def test_help_names_the_console_script(capsys, argv, prog):
    with pytest.raises(SystemExit) as exited:
        cli.cli(argv)
    assert exited.value.code == 0 and capsys.readouterr().out.startswith(prog)


def test_no_or_unknown_command_lists_the_commands(capsys):
    assert cli.cli(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert cli.cli([]) == 2
    assert cli.cli(["--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert "unknown command '--port'" in err and "pixelserve {serve,predict,import}" in err
