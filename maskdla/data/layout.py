"""One reader for layout ground truth: PAGE-XML or ALTO, decided per file by its root
element, and the folder rule that finds those files.

    page = read_layout("page/p1.xml", class_map={"MainZone#1": "MainZone"})
    files = collect_layout_files(["DATA/train"])   # page/*.xml, alto/*.xml or *.xml
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

from maskdla.data.archives import data_folder, is_zip
from maskdla.data.formats import FORMATS, read_any
from maskdla.data.page import Page
from maskdla.data.reading import PathLike
from maskdla.errors import InputError

__all__ = ["read_layout", "collect_layout_files", "LAYOUT_FOLDERS"]

#: Subfolders holding a split's XML, looked into in this order: Transkribus's page/,
#: maskdla's alto/; else the XML next to the images (eScriptorium's export).
LAYOUT_FOLDERS = tuple(layout.folder for layout in FORMATS.values())
#: File stems in an export folder that are not a page (eScriptorium's METS manifest).
NOT_PAGES = ("mets",)


def read_layout(path: PathLike, **options: Any) -> Page:
    """Read a PAGE-XML (root ``PcGts``) or ALTO (root ``alto``) file; ``options`` are those
    of :func:`~maskdla.data.pagexml.read_page` (``elements``, ``class_map``, ``report``,
    ``fold_subtypes``) and mean the same for both formats.

    Raises:
        InputError: a file that is neither (naming its root element), or whatever the
            format's reader refuses.
    """
    return read_any(path, **options)  # the registry decides, maskdla.data.formats


def collect_layout_files(inputs: Sequence[PathLike]) -> List[Path]:
    """The PAGE/ALTO files of ``inputs``: a file is itself; a folder gives the ``*.xml`` of
    first :data:`LAYOUT_FOLDERS` subfolder that has any, else its own ``*.xml`` (sorted by
    name; ``METS.xml`` left out); a ZIP gives those of its extracted folder
    (:func:`maskdla.data.archives.data_folder`). A folder with none is an InputError saying where it
    looked."""
    files: List[Path] = []
    for item in map(Path, inputs):
        if is_zip(item):  # an eScriptorium export: its extracted folder
            item = data_folder(item)
        if item.is_dir():
            folders = [item / sub for sub in LAYOUT_FOLDERS] + [item]
            found = next((pages for pages in map(_pages_in, folders) if pages), [])
            if not found:
                looked = ", ".join(f"{sub}/*.xml" for sub in LAYOUT_FOLDERS)
                raise InputError(f"no PAGE-XML or ALTO files in this folder (looked for {looked}, "
                                 "else *.xml next to the images)", item)
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise InputError("no such file or folder", item)
    return files


def _pages_in(folder: Path) -> List[Path]:
    return sorted(path for path in folder.glob("*.xml") if path.stem.lower() not in NOT_PAGES)
