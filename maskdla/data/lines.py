"""Text lines as training instances: what a line model (``--task lines``) learns.

A page's ``TextLine`` elements (PAGE ``TextRegion/TextLine/Coords``, ALTO
``TextBlock/TextLine/Shape/Polygon``) become its instances, classed by line type
(SegmOnto ``DefaultLine``, ``HeadingLine``, ``InterlinearLine``...; untagged lines are
``DefaultLine``), with the same class options as regions: sub-types folded, then the class
map (``*=DefaultLine`` makes one class of them all). Every region's lines are read,
whatever the region's class: a line model does not depend on the region classes.
Outlines are repaired by the rules regions follow (:func:`~maskdla.data.reading.admit_region`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from maskdla.data.layout import read_layout
from maskdla.data.page import Page, Region
from maskdla.data.reading import ClassMap, PathLike, RepairReport, admit_region

__all__ = ["INSTANCE_KINDS", "LINE_KIND", "read_line_instances"]

#: what a page's training instances are: its regions, or its text lines
INSTANCE_KINDS = ("regions", "lines")
#: ``Region.kind`` of a line taken as an instance
LINE_KIND = "TextLine"


def read_line_instances(path: PathLike, *, elements: Optional[Sequence[str]] = None,
                        class_map: Optional[ClassMap] = None, fold_subtypes: bool = False,
                        report: Optional[RepairReport] = None) -> Page:
    """Read a PAGE or ALTO file and return a page whose regions are its text lines.

    Args:
        path: the PAGE-XML or ALTO file.
        elements: region elements whose lines are read (the readers' default: all text
            regions/blocks).
        class_map, fold_subtypes: applied to the line types.
        report: counts pages, lines kept per class, repaired, clipped, skipped and
            dropped lines (its notes say "region" for a line's id, as for regions).

    Returns:
        A :class:`Page` of the file's size; each line is a ``Region`` (kind
        :data:`LINE_KIND`, id the line's, label its class, polygon its outline) in file
        order; ``lines`` holds the lines themselves (baselines kept).
    """
    report = RepairReport() if report is None else report
    regions = RepairReport()  # the regions' own repairs are not the lines'
    source = read_layout(path, elements=elements, report=regions)
    report.pages += regions.pages
    report.size_from_image += regions.size_from_image
    page = Page(image_filename=source.image_filename, width=source.width,
                height=source.height)
    for line in source.lines:
        admitted = admit_region(line.label, lambda: line.polygon, line.id,
                                (source.width, source.height), report, path, class_map,
                                fold_subtypes)
        if admitted is None:
            continue
        label, polygon = admitted
        page.regions.append(Region(id=line.id, kind=LINE_KIND, label=label, polygon=polygon))
        line.label = label
        page.lines.append(line)
    return page
