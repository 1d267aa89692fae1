"""``maskdla COMMAND ...`` (also ``python -m maskdla COMMAND ...``): one command for every tool.

Each subcommand is the ``python -m maskdla.COMMAND`` program of the same name, with the same
flags (``maskdla train --help``); those forms keep working.
"""
from __future__ import annotations

import importlib
import sys
from typing import Dict, List, Optional, Sequence

#: subcommand -> (module whose ``main(argv)`` runs it, what it does)
COMMANDS: Dict[str, tuple] = {
    "train": ("maskdla.train", "train a model (also under torchrun)"),
    "eval": ("maskdla.eval", "COCO and layout metrics of a checkpoint or of predictions"),
    "predict": ("maskdla.predict", "images or folders -> PAGE-XML / ALTO"),
    "convert": ("maskdla.convert", "PAGE-XML / ALTO <-> COCO JSON"),
    "export": ("maskdla.export", "a checkpoint -> ONNX or TorchScript"),
    "experiments": ("maskdla.experiments.cli", "run experiment files (local or SLURM), status"),
    "report": ("maskdla.report", "run folders -> the study's tables and plots"),
    "bench": ("maskdla.bench.__main__", "benchmarks (docs/benchmarks.md)"),
    "synth": ("maskdla.synth", "write the synthetic corpus"),
    "models": ("maskdla.models", "the models shipped in the package"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return ("usage: maskdla COMMAND [ARGS...]   (maskdla COMMAND --help for its flags)\n\n"
            "commands:\n" + "\n".join(lines))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run ``argv[0]``'s program on the rest of ``argv`` and exit with its code."""
    from maskdla.cli import run_main

    arguments: List[str] = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if arguments else 2)
    command, rest = arguments[0], arguments[1:]
    if command not in COMMANDS:
        print(f"maskdla: error: unknown command {command!r}\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"maskdla {command}"
    run_main(module.main, rest)


if __name__ == "__main__":
    main()
