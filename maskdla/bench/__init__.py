"""Benchmarks: ``python -m maskdla.bench NAME [--json] ...``.

Each benchmark is a module of this package listed in :data:`BENCHMARKS`, with

* ``DESCRIPTION: str`` - one line for ``--help``;
* ``add_arguments(parser: argparse.ArgumentParser) -> None``;
* ``run(args: argparse.Namespace) -> dict`` - runs, prints a readable table, returns the
  figures as a JSON-serialisable dict.

With ``--json`` the dispatcher prints that dict as one JSON object on the last line.
Speed and memory targets live here and in docs/benchmarks.md, never in timed tests.
"""
from __future__ import annotations

#: subcommand name -> module under maskdla.bench
BENCHMARKS = {
    "backbones": "maskdla.bench.backbones",
    "loader": "maskdla.bench.loader",
    "eval": "maskdla.bench.eval",
    "predict": "maskdla.bench.predict",
    "predict-pages": "maskdla.bench.predict_pages",
    "train": "maskdla.bench.train",
    "profile": "maskdla.bench.profile",
    "energy": "maskdla.bench.energy",
    "layout": "maskdla.bench.layout",
}
