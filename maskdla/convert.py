"""Convert ground truth between PAGE-XML, ALTO and COCO JSON.

    python -m maskdla.convert to-coco INPUTS... --out ann.json [--classes A B C]
        [--elements TextRegion TextBlock] [--class-map MainZone#1=MainZone junk=]
        [--fold-subtypes] [--quiet | --verbose]
    python -m maskdla.convert to-page INPUTS... --out DIR     # writes DIR/page/STEM.xml
    python -m maskdla.convert to-alto INPUTS... --out DIR     # writes DIR/alto/STEM.xml

INPUTS are PAGE-XML or ALTO files or folders, or eScriptorium export ZIPs, in any mix (each file's format is decided
by its root element; a folder gives its ``page/*.xml``, else its ``alto/*.xml``, else its
``*.xml``); ``to-page`` and ``to-alto`` also take COCO JSON files. ``page2coco`` and
``coco2page`` are the old names of ``to-coco`` and ``to-page``. Image file names in the
JSON are relative to the JSON file. Each repaired or skipped region is one line (the
first 20, all with ``--verbose``), then one summary; ``--quiet`` prints only errors.
Bad input exits with code 2 and one message, leaving no output file behind.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from maskdla.cli import run_main
from maskdla.data.coco import coco_to_pages, load_coco, pages_to_coco, read_pages
from maskdla.data.layout import collect_layout_files
from maskdla.data.formats import FORMATS
from maskdla.data.page import Page
from maskdla.data.reading import RepairReport, parse_class_map, unused_class_options
from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

#: writing command -> its format's name (maskdla.data.formats.FORMATS: one row each)
WRITE_COMMANDS: Dict[str, str] = {f"to-{name}": name for name in FORMATS}
ALIASES = {"page2coco": "to-coco", "coco2page": "to-page"}


def _say(args: argparse.Namespace, line: str) -> None:
    if args.verbosity > 0:
        print(line)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maskdla.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    reading = argparse.ArgumentParser(add_help=False)
    reading.add_argument("--elements", nargs="+", action="extend", metavar="ELEMENT",
                         help="region elements to read, e.g. TextRegion MusicRegion TextBlock "
                              "(default: every PAGE *Region; ALTO TextBlock, Illustration, "
                              "GraphicalElement)")
    reading.add_argument("--class-map", nargs="+", action="extend", default=[], metavar="OLD=NEW",
                         help="rename or merge classes (paragraph=text); OLD= drops OLD; "
                              "*= drops every class not named")
    reading.add_argument("--fold-subtypes", action="store_true",
                         help="fold SegmOnto sub-types (MainZone#1, MainZone:column) to the "
                              "main type, before --class-map")
    loudness = reading.add_mutually_exclusive_group()
    loudness.add_argument("--quiet", "-q", dest="verbosity", action="store_const", const=0,
                          help="print errors only")
    loudness.add_argument("--verbose", "-v", dest="verbosity", action="store_const", const=2,
                          help="print every repaired or skipped region")
    reading.set_defaults(verbosity=1)
    commands = parser.add_subparsers(dest="command", required=True)
    to_coco = commands.add_parser("to-coco", aliases=["page2coco"], parents=[reading],
                                  help="PAGE/ALTO files or folders -> one COCO JSON")
    to_coco.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="PAGE-XML or ALTO file, a folder of them, or an eScriptorium "
                              "export ZIP")
    to_coco.add_argument("--out", required=True, type=Path, help="COCO JSON file to write")
    to_coco.add_argument("--classes", nargs="+", action="extend", metavar="CLASS",
                         help="category order (ids 1..C); default: sorted class names")
    for name, format_name in WRITE_COMMANDS.items():
        folder = FORMATS[format_name].folder
        aliases = [alias for alias, target in ALIASES.items() if target == name]
        writer = commands.add_parser(name, aliases=aliases, parents=[reading],
                                     help=f"PAGE/ALTO/COCO inputs -> DIR/{folder}/STEM.xml")
        writer.add_argument("inputs", nargs="+", metavar="INPUT",
                            help="PAGE-XML or ALTO file or folder, an eScriptorium export "
                                 "ZIP, or a COCO JSON file")
        writer.add_argument("--out", required=True, type=Path,
                            help=f"folder: files go to OUT/{folder}/<image stem>.xml")
    return parser


def _report(args: argparse.Namespace, report: RepairReport) -> None:
    """The region notes (capped unless --verbose) and a class option matching nothing on
    stderr, the summary on stdout."""
    if args.verbosity <= 0:
        return
    *notes, summary = report.lines(args.verbosity)
    for note in notes:
        print(f"maskdla: {note}", file=sys.stderr)
    unused = unused_class_options(report.found, report.classes, parse_class_map(args.class_map),
                                  getattr(args, "classes", None))
    if unused:
        inputs = ", ".join(str(item) for item in args.inputs)
        print(f"maskdla: warning: {inputs}: {unused}", file=sys.stderr)
    print(summary)


def to_coco(args: argparse.Namespace) -> None:
    report = RepairReport()
    entries = read_pages(collect_layout_files(args.inputs), args.out.resolve().parent,
                         args.elements, parse_class_map(args.class_map), report,
                         args.fold_subtypes)
    coco = pages_to_coco(entries, args.classes)
    write_bytes_atomic(args.out, json.dumps(coco).encode("utf-8"))
    _report(args, report)
    names = {category["id"]: category["name"] for category in coco["categories"]}
    origin = "--classes order" if args.classes else "sorted names; pass --classes to fix them"
    _say(args, f"category ids ({origin}): "
         + ", ".join(f"{i}={name}" for i, name in names.items()))
    _say(args, f"wrote {args.out}")


def _input_pages(args: argparse.Namespace, report: RepairReport) -> List[Page]:
    """Pages of every input: COCO JSON files through :func:`coco_to_pages`, the rest
    through the PAGE/ALTO readers with the reading options."""
    pages: List[Page] = []
    class_map = parse_class_map(args.class_map)
    xml_inputs = []
    for item in map(Path, args.inputs):
        if item.suffix.lower() == ".json" and item.is_file():
            pages += coco_to_pages(load_coco(item))
        else:
            xml_inputs.append(item)
    if xml_inputs:
        entries = read_pages(collect_layout_files(xml_inputs), Path.cwd(), args.elements, class_map,
                             report, args.fold_subtypes)
        pages += [page for page, _ in entries]
    return pages


def to_xml(args: argparse.Namespace) -> None:
    layout = FORMATS[WRITE_COMMANDS[args.command]]
    folder = layout.folder
    report = RepairReport()
    pages = _input_pages(args, report)
    targets = [args.out / folder / (Path(page.image_filename.replace("\\", "/")).stem + ".xml")
               for page in pages]
    twice = [str(path) for path, count in Counter(targets).items() if count > 1]
    if twice:
        raise InputError(f"several pages share the image stem of {twice[0]}")
    documents = [layout.serialise(page) for page in pages]  # all built before anything is written
    for target, document in zip(targets, documents):
        write_bytes_atomic(target, document)
    if report.pages:
        _report(args, report)
    _say(args, f"wrote {len(pages)} {layout.title} files to "
         f"{args.out / folder}")


COMMANDS: Dict[str, Callable[[argparse.Namespace], None]] = {
    "to-coco": to_coco, **{name: to_xml for name in WRITE_COMMANDS}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.command = ALIASES.get(args.command, args.command)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    run_main(main)
