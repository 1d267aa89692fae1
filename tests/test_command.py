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


def test_the_libraries_warnings_on_bad_input_are_not_shown_beside_maskdlas_lines(tmp_path):
    """shapely's RuntimeWarning (an outline overflowing its arithmetic) and PIL's
    DecompressionBombWarning (a page over its pixel limit) used to print, with their source
    lines, beside maskdla's own note and summary."""
    from PIL import Image

    namespace = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
    (tmp_path / "page").mkdir()
    for name, (width, height), points in (("huge", (9500, 9500), "10,10 90,10 90,90 10,90"),
                                          ("small", (200, 100), "0,0 1e300,1e300 1e300,0 0,1e300")):
        Image.new("1", (width, height)).save(tmp_path / f"{name}.png")  # 90 M pixels: a bomb?
        (tmp_path / "page" / f"{name}.xml").write_text(
            f'<PcGts xmlns="{namespace}"><Page imageFilename="{name}.png" imageWidth="{width}" '
            f'imageHeight="{height}"><TextRegion id="r1" custom="structure {{type:text;}}">'
            f'<Coords points="{points}"/></TextRegion></Page></PcGts>')
    done = subprocess.run([sys.executable, "-W", "always", "-m", "maskdla", "convert", "to-coco",
                           str(tmp_path), "--out", str(tmp_path / "train.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"maskdla: {tmp_path / 'page' / 'small.xml'}: region r1: self-intersection repaired "
        "and clipped to the page"]
    assert "repaired 1, clipped 1, skipped 0" in done.stdout  # maskdla's own summary stays


def test_a_reader_that_leaves_the_pipe_ends_the_command_without_a_traceback():
    """``maskdla models | head -1``: the write into the closed pipe ends the program
    quietly with 141 (128 + SIGPIPE), as a shell tool's does."""
    program = ("from maskdla.cli import run_main\n"
               "run_main(lambda argv: [print('x' * 100, flush=True) for _ in range(10**5)] and 0)")
    process = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.readline()
    process.stdout.close()
    error = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in error and "BrokenPipeError" not in error, error
