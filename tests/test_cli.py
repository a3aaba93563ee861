"""The eagle3-ref command."""

from importlib.metadata import entry_points

import pytest

from eagle3_ref.cli import main

pytestmark = pytest.mark.cli


def test_help_lists_info(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "info" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: eagle3-ref" in capsys.readouterr().out


def test_info_reports_versions_devices_and_dtypes(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("eagle3-ref", "torch", "transformers", "cuda", "dtypes cpu", "float64: ok", "bfloat16"):
        assert word in out, word


def test_console_script_is_installed():
    # pyproject's [project.scripts], as pip installed it: `eagle3-ref` runs cli.main.
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    assert scripts["eagle3-ref"].load() is main


def test_unknown_command_fails():
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (["toy", "train-target", "--out", "FILE"], "--out FILE is a file, not a directory"),
    (["toy", "train-target", "--out", "DIR/t", "--steps", "0"], "--steps must be an int >= 1, got 0"),
    (["toy", "train-target", "--out", "DIR/t", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["vectors", "export", "FILE"], "FILE is a file, not a directory"),
])
def test_an_output_path_or_budget_that_cannot_work_is_named(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    argv = [a.replace("FILE", str(tmp_path / "file")).replace("DIR", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    assert message.replace("FILE", str(tmp_path / "file")) in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine"
