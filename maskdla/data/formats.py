"""The one registry of layout file formats: what convert, predict (``--format``, resume),
eval ``--predictions`` and the readers dispatch on.

Each :class:`LayoutFormat` says how to recognise a file (its XML root element), how to
read it, how to serialise and write a page, and the subfolder its files go to
(``OUT/<folder>/STEM.xml``). COCO JSON is not a row: it holds many pages
(:mod:`maskdla.data.coco`) and is told apart by its ``.json`` suffix.

To add a format, edit here: one row of :data:`FORMATS`; ``convert to-NAME``,
``predict --format NAME`` and the readers follow.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from maskdla.data.alto import alto_to_xml, read_alto, write_alto
from maskdla.data.page import Page
from maskdla.data.pagexml import page_to_xml, read_page, write_page
from maskdla.data.reading import PathLike, root_element
from maskdla.errors import InputError

__all__ = ["LayoutFormat", "FORMATS", "format_of_file", "read_any", "parse_formats"]


@dataclasses.dataclass(frozen=True)
class LayoutFormat:
    """One page-per-file layout format.

    Attributes:
        name: the ``--format`` name (``convert to-NAME``).
        title: how messages name it (``PAGE-XML``).
        folder: the subfolder its files go to and are looked for in (``page/``).
        root: the XML root element that marks a file of this format.
        read: reader(path, elements=, class_map=, report=, fold_subtypes=) -> Page.
        serialise: page -> the file's bytes.
        write: writer(page, path), atomic.
    """

    name: str
    title: str
    folder: str
    root: str
    read: Callable[..., Page]
    serialise: Callable[[Page], bytes]
    write: Callable[[Page, Path], None]


#: ``--format`` name -> format, in the order the folder rule looks into their subfolders
#: (Transkribus's page/, then maskdla's alto/)
FORMATS: Dict[str, LayoutFormat] = {
    "page": LayoutFormat("page", "PAGE-XML", "page", "PcGts", read_page, page_to_xml,
                         write_page),
    "alto": LayoutFormat("alto", "ALTO", "alto", "alto", read_alto, alto_to_xml, write_alto),
}


def format_of_file(path: PathLike) -> LayoutFormat:
    """The format of an XML file, by its root element.

    Raises:
        InputError: a file of no registered format (naming its root element).
    """
    name, namespace = root_element(path)
    found: Optional[LayoutFormat] = next(
        (layout for layout in FORMATS.values() if layout.root == name), None)
    if found is None:
        roots = " or ".join(layout.root for layout in FORMATS.values())
        titles = " nor ".join(layout.title for layout in FORMATS.values())
        raise InputError(f"neither {titles} (root element {name!r} in namespace "
                         f"{namespace!r}; expected {roots})", path)
    return found


def read_any(path: PathLike, **options: Any) -> Page:
    """Read a file of any registered format (decided by :func:`format_of_file`)."""
    return format_of_file(path).read(path, **options)


def parse_formats(text: str, flag: str = "--format") -> Tuple[str, ...]:
    """``page,alto`` -> ("page", "alto"); an unknown or missing format is an InputError."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise InputError(f"{flag}: unknown format {','.join(unknown) or text!r} "
                         f"(one or more of {', '.join(FORMATS)}, comma-separated)")
    return names
