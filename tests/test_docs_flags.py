"""The flags README.md and docs/*.md name against the parsers that read them.

Every maskdla command line the documents show (``maskdla X ...``, ``python -m maskdla.X
...``, ``torchrun ... -m maskdla.X ...``, in code blocks with their ``\\`` continuations
or in inline code) may only use flags its parser has; and every flag of every parser is
named somewhere in the documents, so that none is reachable through ``--help`` alone.
"""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from maskdla.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: the module that builds each command's parser, where it is not the command's own module
PARSER_MODULES = {"train": "maskdla.train_cli"}

#: ``maskdla X``, ``python -m maskdla.X`` or ``-m maskdla.X`` (torchrun), X a command
COMMAND = re.compile(r"(?:\bmaskdla\s+|-m\s+maskdla\.)(" + "|".join(
    sorted((re.escape(name) for name in COMMANDS), key=len, reverse=True)) + r")\b")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: where a command line ends: the next shell command, a pipe, a comment
COMMAND_END = re.compile(r"\s(?:#|\||&&|;)|`")


def _flags(parser: argparse.ArgumentParser) -> Set[str]:
    """Every long option of ``parser`` and of its subcommands."""
    flags = set()
    for action in parser._actions:
        flags.update(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
    return flags


@pytest.fixture(scope="module")
def parser_flags() -> Dict[str, Set[str]]:
    flags = {}
    for name, (module_name, _) in COMMANDS.items():
        module = importlib.import_module(PARSER_MODULES.get(name, module_name))
        flags[name] = _flags(module.build_parser())
    return flags


def _logical_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(first line number, line) with ``\\`` continuations joined."""
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def documented_commands(path: Path) -> Iterator[Tuple[int, str, List[str]]]:
    """(line number, command, flags) of each maskdla command line in the document."""
    for number, line in _logical_lines(path.read_text(encoding="utf-8")):
        for match in COMMAND.finditer(line):
            rest = line[match.end():]
            end = COMMAND_END.search(rest)
            yield number, match.group(1), FLAG.findall(rest[:end.start()] if end else rest)


def test_documented_command_lines_use_only_flags_their_parser_has(parser_flags):
    wrong = [f"{path.relative_to(ROOT)}:{number}: maskdla {command} {flag}"
             for path in DOCUMENTS for number, command, flags in documented_commands(path)
             for flag in flags if flag not in parser_flags[command] | {"--help"}]
    assert not wrong, "flags the parsers do not have:\n" + "\n".join(wrong)


def test_every_flag_is_named_in_the_documents(parser_flags):
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCUMENTS)
    named = set(FLAG.findall(text))
    missing = sorted(f"maskdla {command} {flag}" for command, flags in parser_flags.items()
                     for flag in flags - named - {"--help"})
    assert not missing, "flags no document names:\n" + "\n".join(missing)


def test_the_scanner_finds_commands_and_their_flags(tmp_path):
    """The reader of documents itself: continuations, inline code, comments, pipes."""
    page = tmp_path / "page.md"
    page.write_text("run `maskdla predict CKPT scans --out out --zip b.zip` then\n"
                    "python -m maskdla.train --data DATA \\\n    --epochs 5  # --not-a-flag\n"
                    "torchrun --nproc_per_node=2 -m maskdla.eval CKPT --split test | less --x\n"
                    "kraken --device cpu; maskdlax --no\n")
    assert list(documented_commands(page)) == [
        (1, "predict", ["--out", "--zip"]), (2, "train", ["--data", "--epochs"]),
        (4, "eval", ["--split"])]
