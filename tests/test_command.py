"""The one command: ``maskdla COMMAND`` runs ``python -m maskdla.COMMAND``'s program."""
import importlib
import subprocess
import sys

import pytest

from maskdla.__main__ import COMMANDS, main


def test_every_subcommand_names_a_program_with_a_main():
    assert set(COMMANDS) >= {"train", "eval", "predict", "convert", "export", "experiments",
                             "report", "bench", "synth", "models"}
    for module, _ in COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_a_subcommand_runs_its_program_and_keeps_its_exit_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--lr", "inf"])
    assert exit_info.value.code == 2
    assert "maskdla: error: --lr must be a finite number > 0, got inf" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["models"])
    assert exit_info.value.code == 0
    assert "segmonto-base" in capsys.readouterr().out


def test_no_command_or_an_unknown_one_prints_the_commands_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "usage: maskdla COMMAND" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "maskdla: error: unknown command 'trian'" in error and "predict" in error


def test_python_dash_m_maskdla_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "maskdla", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "commands:" in done.stdout and "train" in done.stdout
