"""Convert ground truth between PAGE-XML and COCO JSON.

    python -m maskdla.convert page2coco INPUTS... --out ann.json [--classes A B C]
        [--elements TextRegion MusicRegion] [--class-map paragraph=text junk=]
    python -m maskdla.convert coco2page ann.json --out DIR      # writes DIR/page/STEM.xml

INPUTS are PAGE-XML files or folders (a folder gives its ``page/*.xml``, else its
``*.xml``). Image file names in the JSON are relative to the JSON file. Bad input exits
with code 2 and one message, leaving no output file behind.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import List, Optional, Sequence

from maskdla.cli import run_main
from maskdla.data.coco import coco_to_pages, collect_xml, load_coco, pages_to_coco, read_pages
from maskdla.data.pagexml import PageWarning, RepairReport, parse_class_map, page_to_xml
from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

#: Region warnings printed one per line; the rest are counted.
MAX_WARNINGS_SHOWN = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maskdla.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    to_coco = commands.add_parser("page2coco", help="PAGE-XML files/folders -> one COCO JSON")
    to_coco.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="PAGE-XML file, or folder holding page/*.xml or *.xml")
    to_coco.add_argument("--out", required=True, type=Path, help="COCO JSON file to write")
    to_coco.add_argument("--classes", nargs="+", action="extend", metavar="CLASS",
                         help="category order (ids 1..C); default: sorted class names")
    to_coco.add_argument("--elements", nargs="+", action="extend", metavar="ELEMENT",
                         help="region elements to read, e.g. TextRegion MusicRegion "
                              "(default: every *Region element)")
    to_coco.add_argument("--class-map", nargs="+", action="extend", default=[], metavar="OLD=NEW",
                         help="rename or merge classes (paragraph=text); OLD= drops OLD")
    to_page = commands.add_parser("coco2page", help="COCO JSON -> DIR/page/STEM.xml")
    to_page.add_argument("annotations", type=Path, help="COCO JSON file")
    to_page.add_argument("--out", required=True, type=Path,
                         help="folder: PAGE files go to OUT/page/<image stem>.xml")
    return parser


def page2coco(args: argparse.Namespace) -> None:
    class_map = parse_class_map(args.class_map)
    report = RepairReport()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PageWarning)
        entries = read_pages(collect_xml(args.inputs), args.out.resolve().parent,
                             args.elements, class_map, report)
    coco = pages_to_coco(entries, args.classes)
    write_bytes_atomic(args.out, json.dumps(coco).encode("utf-8"))

    for warning in caught[:MAX_WARNINGS_SHOWN]:
        print(f"maskdla: warning: {warning.message}", file=sys.stderr)
    if len(caught) > MAX_WARNINGS_SHOWN:
        print(f"maskdla: ... and {len(caught) - MAX_WARNINGS_SHOWN} more warnings",
              file=sys.stderr)
    names = {category["id"]: category["name"] for category in coco["categories"]}
    per_class = Counter(names[a["category_id"]] for a in coco["annotations"])
    print(f"pages: {report.pages}")
    print(f"regions: {len(coco['annotations'])} ("
          + ", ".join(f"{name} {per_class[name]}" for name in names.values()) + ")")
    print(f"skipped: {report.skipped}, repaired: {report.repaired}, clipped: {report.clipped}, "
          f"dropped by --class-map: {report.dropped}, size from image: {report.size_from_image}")
    origin = "--classes order" if args.classes else "sorted names; pass --classes to fix them"
    print(f"category ids ({origin}): "
          + ", ".join(f"{i}={name}" for i, name in names.items()))
    print(f"wrote {args.out}")


def coco2page(args: argparse.Namespace) -> None:
    coco = load_coco(args.annotations)
    pages = coco_to_pages(coco)
    targets: List[Path] = [args.out / "page" / (Path(page.image_filename).stem + ".xml")
                           for page in pages]
    twice = [str(path) for path, count in Counter(targets).items() if count > 1]
    if twice:
        raise InputError(f"several images share the stem of {twice[0]}", args.annotations)
    documents = [page_to_xml(page) for page in pages]  # all built before anything is written
    for target, document in zip(targets, documents):
        write_bytes_atomic(target, document)
    print(f"wrote {len(pages)} PAGE-XML files to {args.out / 'page'}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    {"page2coco": page2coco, "coco2page": coco2page}[args.command](args)
    return 0


if __name__ == "__main__":
    run_main(main)
