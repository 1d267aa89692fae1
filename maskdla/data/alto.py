"""Read and write ALTO (Analyzed Layout and Text Object) files, eScriptorium's and kraken's
ground-truth format.

:func:`read_alto` reads ALTO v2, v3 and v4 (the version from the root element's
namespace) into the same :class:`~maskdla.data.page.Page` as PAGE-XML, with the same
options, repair rules, hardened parser and one-line errors (:mod:`maskdla.data.reading`).
:func:`write_alto` writes ALTO 4.3 that validates against the official schema.

A region's class comes from ``@TAGREFS`` -> ``Tags/OtherTag|LayoutTag/@LABEL`` (SegmOnto
zone names such as ``MainZone`` or ``MainZone#1``), else the element name. maskdla's own
predictions carry their score in a second referenced tag, ``OtherTag TYPE="score"
LABEL="0.97"``.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union
from xml.etree import ElementTree as ET

from maskdla.data.page import DEFAULT_LINE_LABEL, Page, Point, Region, TextLine
from maskdla.data.pagexml import _xml_ids
from maskdla.data.reading import (ALTO_BLOCK_ELEMENTS, ALTO_DEFAULT_ELEMENTS, ClassMap, PathLike,
                                  RepairReport, admit_region, check_page_size, children,
                                  count_duplicate_ids, find_image, finite_points, image_header,
                                  read_document)
from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

__all__ = ["read_alto", "write_alto", "alto_to_xml", "parse_alto_points"]

ALTO_4_NAMESPACE = "http://www.loc.gov/standards/alto/ns-v4#"
_ALTO_NAMESPACE = re.compile(r"^https?://www\.loc\.gov/standards/alto(/ns-v\d+#?|/)?$"
                             r"|^http://schema\.ccs-gmbh\.com/ALTO$")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"
#: Tag elements whose LABEL names a block's class.
CLASS_TAGS = ("OtherTag", "LayoutTag")
#: ``TYPE`` of the tag that carries a predicted region's score in its LABEL.
SCORE_TAG_TYPE = "score"
#: ALTO length units per inch; pixel coordinates = value * dpi / units per inch.
UNITS_PER_INCH = {"mm10": 254.0, "inch1200": 1200.0}
#: Pixels a page size converted from mm10/inch1200 may differ from the image's (the
#: writer rounded it in its own unit) and still be taken as the image's size.
CONVERTED_SIZE_TOLERANCE = 2
#: ALTO element written for a region of a PAGE kind (other kinds: TextBlock).
PAGE_KINDS = {"ImageRegion": "Illustration", "GraphicRegion": "Illustration",
              "LineDrawingRegion": "Illustration", "ChartRegion": "Illustration",
              "MapRegion": "Illustration", "SeparatorRegion": "GraphicalElement"}
_PAGE_SPACES = ("TopMargin", "LeftMargin", "RightMargin", "BottomMargin", "PrintSpace")


# ---------------------------------------------------------------------------- reading

def parse_alto_points(text: str) -> List[Point]:
    """``POINTS``/``BASELINE`` text, ``"x y x y ..."`` or ``"x,y x,y ..."``, as points.
    Raises ValueError on an odd count or unreadable numbers."""
    numbers = text.replace(",", " ").split()
    if len(numbers) % 2:
        raise ValueError("an odd number of coordinates")
    return finite_points(zip(numbers[::2], numbers[1::2]))


class _Units:
    """Converts ALTO lengths in ``MeasurementUnit`` to pixels of the page image."""

    def __init__(self, root: ET.Element, image_path: Optional[Path], path: PathLike):
        unit = (next((e.text for d in children(root, "Description")
                      for e in children(d, "MeasurementUnit")), None) or "pixel").strip()
        self.scale = (1.0, 1.0)
        self.image_size: Optional[Tuple[int, int]] = None
        if unit == "pixel":
            return
        if unit not in UNITS_PER_INCH:
            raise InputError(f"unknown MeasurementUnit {unit!r} (ALTO has pixel, mm10 and "
                             "inch1200)", path)
        header = image_header(image_path) if image_path is not None else None
        dpi = header[2] if header is not None else None
        if dpi is None:
            where = "has no resolution (dpi)" if image_path else "was not found"
            raise InputError(f"MeasurementUnit {unit} needs the image's resolution to give "
                             f"pixels, and the image {where}", path)
        self.scale = (dpi[0] / UNITS_PER_INCH[unit], dpi[1] / UNITS_PER_INCH[unit])
        self.image_size = header[:2]

    def points(self, points: List[Point]) -> List[Point]:
        sx, sy = self.scale
        return points if self.scale == (1.0, 1.0) else [(x * sx, y * sy) for x, y in points]

    def size(self, page: ET.Element) -> Tuple[Optional[int], Optional[int]]:
        """Page/@WIDTH, @HEIGHT in pixels; None where unusable. Converted from mm10 or
        inch1200 they are rounded, and within :data:`CONVERTED_SIZE_TOLERANCE` pixels of
        the image's size they are the image's size."""
        values: List[Optional[int]] = []
        for axis, name in enumerate(("WIDTH", "HEIGHT")):
            try:
                value = float(page.get(name, "")) * self.scale[axis]
            except ValueError:
                value = 0.0
            if self.image_size is not None:
                nearby = abs(value - self.image_size[axis]) <= CONVERTED_SIZE_TOLERANCE
                value = float(self.image_size[axis]) if nearby else float(round(value))
            values.append(int(value) if value >= 1 and value == int(value) else None)
        return values[0], values[1]


def _outline(element: ET.Element, units: _Units) -> List[Point]:
    """``Shape/Polygon/@POINTS``, else the HPOS/VPOS/WIDTH/HEIGHT box, in pixels; [] when
    neither is there. Raises ValueError on unreadable numbers."""
    polygons = [polygon for shape in children(element, "Shape")
                for polygon in children(shape, "Polygon")]
    if polygons:
        return units.points(parse_alto_points(polygons[0].get("POINTS", "")))
    if not all(element.get(name) for name in ("HPOS", "VPOS", "WIDTH", "HEIGHT")):
        return []
    x, y, w, h = (float(element.get(name, "")) for name in ("HPOS", "VPOS", "WIDTH", "HEIGHT"))
    return units.points(finite_points([(str(x), str(y)), (str(x + w), str(y)),
                                       (str(x + w), str(y + h)), (str(x), str(y + h))]))


def _tags(root: ET.Element) -> Dict[str, ET.Element]:
    return {tag.get("ID", ""): tag for tags in children(root, "Tags") for tag in tags}


def _label_and_score(element: ET.Element, tags: Dict[str, ET.Element]
                     ) -> Tuple[str, Optional[float]]:
    """The block's class (first referenced OtherTag/LayoutTag LABEL, else the element
    name) and score (a referenced ``TYPE="score"`` tag), from ``@TAGREFS``."""
    label, score = "", None
    for reference in element.get("TAGREFS", "").split():
        tag = tags.get(reference)
        if tag is None or tag.tag not in CLASS_TAGS:
            continue
        if tag.get("TYPE") == SCORE_TAG_TYPE:
            try:
                score = float(tag.get("LABEL", ""))
            except ValueError:
                pass
        elif not label:
            label = tag.get("LABEL", "").strip()
    return label or element.tag, score


def _blocks(parent: ET.Element) -> Iterator[ET.Element]:
    """Every block under a Page, in document order; a ComposedBlock before its children."""
    for child in parent:
        if child.tag in _PAGE_SPACES:
            yield from _blocks(child)
        elif child.tag in ALTO_BLOCK_ELEMENTS:
            yield child
            if child.tag == "ComposedBlock":
                yield from _blocks(child)


def _reading_order(root: ET.Element) -> List[str]:
    """Element ids of the ALTO 4 ``ReadingOrder`` (groups flattened), or []."""
    def refs(group: ET.Element) -> Iterator[str]:
        for child in group:
            yield from child.get("REF", "").split() if child.tag == "ElementRef" else ()
            if child.tag.endswith("Group"):
                yield from child.get("REF", "").split()
                yield from refs(child)

    return list(dict.fromkeys(ref for order in children(root, "ReadingOrder")
                              for ref in refs(order)))


def _image_name(root: ET.Element) -> str:
    return next((name.text.strip() for description in children(root, "Description")
                 for info in children(description, "sourceImageInformation")
                 for name in children(info, "fileName") if name.text), "")


def read_alto(path: PathLike, elements: Optional[Sequence[str]] = None,
              class_map: Optional[ClassMap] = None, report: Optional[RepairReport] = None,
              fold_subtypes: bool = False) -> Page:
    """Read an ALTO (v2, v3 or v4) file.

    Args:
        path: the XML file.
        elements: block elements to keep; default TextBlock, Illustration and
            GraphicalElement (ComposedBlocks are looked into; name ``ComposedBlock`` to
            keep the composed block itself). PAGE names are allowed and keep nothing here.
        class_map, report, fold_subtypes: as for :func:`maskdla.data.pagexml.read_page`.

    Returns:
        The :class:`Page` in pixels of the image: regions in the ``ReadingOrder`` when
        the file has one, else in document order (ALTO's implicit reading order);
        ``reading_order`` holds their ids. Text lines of kept TextBlocks with their
        polygon (or box), ``BASELINE`` and text (the line's String contents).

    Raises:
        InputError: unreadable or non-ALTO XML, a DTD, an unknown MeasurementUnit, mm10 or
            inch1200 without the image's resolution, or a page size that cannot be known.
    """
    report = report if report is not None else RepairReport()
    root = read_document(path, elements, "alto", _ALTO_NAMESPACE, "an ALTO")
    page_element = next((p for layout in children(root, "Layout")
                         for p in children(layout, "Page")), None)
    if page_element is None:
        raise InputError("ALTO without a Layout/Page element", path)
    image_name = _image_name(root)
    image_path = find_image(path, image_name)
    units = _Units(root, image_path, path)
    width, height = check_page_size(units.size(page_element), image_path,
                                    image_name or Path(path).stem + ".*", report, path,
                                    "Page/@WIDTH and @HEIGHT")
    page = Page(image_filename=image_name or (image_path.name if image_path else ""),
                width=width, height=height)
    report.pages += 1
    tags = _tags(root)
    wanted = ALTO_DEFAULT_ELEMENTS if elements is None else elements
    for number, element in enumerate(_blocks(page_element)):
        if element.tag not in wanted:
            continue
        region_id = element.get("ID") or f"region_{number}"
        label, score = _label_and_score(element, tags)
        admitted = admit_region(label, lambda: _outline(element, units), region_id,
                                (width, height), report, path, class_map, fold_subtypes)
        if admitted is None:
            continue
        page.regions.append(Region(id=region_id, kind=element.tag, label=admitted[0],
                                   polygon=admitted[1], score=score))
        page.lines.extend(_text_lines(element, region_id, units, path, report, tags))
    count_duplicate_ids([region.id for region in page.regions], report, path)
    _apply_reading_order(page, _reading_order(root))
    return page


def _apply_reading_order(page: Page, order: List[str]) -> None:
    """Sort the regions by ``order`` (unlisted ones after, in document order) and record
    the resulting order."""
    position = {region_id: i for i, region_id in enumerate(order)}
    page.regions.sort(key=lambda region: position.get(region.id, len(position)))
    page.reading_order = [region.id for region in page.regions]


def _baseline(line: ET.Element, units: _Units) -> List[Point]:
    """``@BASELINE`` as points; ALTO before 4.2 has one number (the baseline's y), taken
    across the line's box."""
    text = line.get("BASELINE", "").strip()
    if not text:
        return []
    numbers = text.replace(",", " ").split()
    if len(numbers) == 1 and line.get("HPOS") and line.get("WIDTH"):
        x, w = float(line.get("HPOS", "")), float(line.get("WIDTH", ""))
        return units.points(finite_points([(str(x), numbers[0]), (str(x + w), numbers[0])]))
    return units.points(parse_alto_points(text))


def _text_lines(block: ET.Element, region_id: str, units: _Units, path: PathLike,
                report: RepairReport, tags: Dict[str, ET.Element]) -> Iterator[TextLine]:
    for number, line in enumerate(children(block, "TextLine")):
        line_id = line.get("ID") or f"{region_id}_line_{number}"
        try:
            polygon = _outline(line, units)
            baseline = _baseline(line, units)
        except ValueError:
            report.note(path, f"text line {line_id} skipped: unreadable points")
            continue
        words = [string.get("CONTENT", "") for string in children(line, "String")]
        text = " ".join(words) if any(words) else None
        label, score = _label_and_score(line, tags)
        yield TextLine(id=line_id, region_id=region_id, polygon=polygon, baseline=baseline,
                       text=text, label=DEFAULT_LINE_LABEL if label == "TextLine" else label,
                       score=score)


# --------------------------------------------------------------------------- writing

def _coordinate(value: float) -> str:
    return str(max(0, round(value)))


def _points(points: Sequence[Point]) -> str:
    """ALTO POINTS: ``"x y x y ..."``, non-negative integers (as eScriptorium and kraken)."""
    return " ".join(f"{_coordinate(x)} {_coordinate(y)}" for x, y in points)


def _box(points: Sequence[Point]) -> Dict[str, str]:
    """HPOS/VPOS/WIDTH/HEIGHT of the points' bounding box (integers)."""
    x0, y0 = (max(0, round(min(c))) for c in zip(*points))
    x1, y1 = (max(0, round(max(c))) for c in zip(*points))
    return {"HPOS": str(x0), "VPOS": str(y0), "WIDTH": str(x1 - x0), "HEIGHT": str(y1 - y0)}


def _block_element(region: Region) -> str:
    """ALTO element of a region: its own kind when ALTO has it, the ALTO counterpart of a
    PAGE kind, else TextBlock."""
    if region.kind in ALTO_BLOCK_ELEMENTS:
        return region.kind
    return PAGE_KINDS.get(region.kind, "TextBlock")


def holds_lines(region: Region) -> bool:
    """Whether :func:`write_alto` writes ``region`` as a TextBlock, the one ALTO block
    that holds TextLines (its lines are left out otherwise)."""
    return _block_element(region) == "TextBlock"


def _ordered_regions(page: Page) -> List[Region]:
    """The regions in ``page.reading_order``, then the rest in list order."""
    first: Dict[str, Region] = {}
    for region in page.regions:
        first.setdefault(region.id, region)
    ordered = [first[i] for i in dict.fromkeys(page.reading_order) if i in first]
    chosen = {id(region) for region in ordered}
    return ordered + [region for region in page.regions if id(region) not in chosen]


#: id prefix of each kind of tag: block types and line types as eScriptorium numbers them
_TAG_PREFIXES = {"class": "BT", "line": "LT", "score": "score"}


def _wanted_tags(regions: Sequence[Region], lines: Sequence[TextLine]) -> List[Tuple[str, str]]:
    """(kind, value) of every tag the file needs: block classes, line classes, scores."""
    wanted = [("class", region.label) for region in regions]
    wanted += [("line", line.label) for line in lines]
    wanted += [("score", f"{item.score:.4g}") for item in [*regions, *lines]
               if item.score is not None]
    return list(dict.fromkeys(wanted))


def _tag_names(wanted: Sequence[Tuple[str, str]]) -> List[str]:
    """The ids the tags of :func:`_wanted_tags` ask for: BT1.., LT1.., score1.."""
    numbers: Dict[str, int] = {}
    names = []
    for kind, _ in wanted:
        numbers[kind] = numbers.get(kind, 0) + 1
        names.append(f"{_TAG_PREFIXES[kind]}{numbers[kind]}")
    return names


def _write_tags(root: ET.Element, wanted: Sequence[Tuple[str, str]], ids: Iterator[str]
                ) -> Dict[Tuple[str, object], str]:
    """``Tags``: one OtherTag per block class and per line class (eScriptorium's shape:
    ``DESCRIPTION="block type X"``, ``"line type X"``) and per distinct score; returns
    (kind of tag, value) -> tag id."""
    refs: Dict[Tuple[str, object], str] = {}
    if not wanted:
        return refs
    tags = ET.SubElement(root, "Tags")
    for kind, value in wanted:
        refs[(kind, value)] = tag_id = next(ids)
        described = "block type" if kind == "class" else "line type"
        attributes = ({"ID": tag_id, "LABEL": str(value), "DESCRIPTION": f"{described} {value}"}
                      if kind != "score" else
                      {"ID": tag_id, "TYPE": SCORE_TAG_TYPE, "LABEL": str(value)})
        ET.SubElement(tags, "OtherTag", attributes)
    return refs


def _references(item: Union[Region, TextLine], kind: str, tag_ids: Dict[Tuple[str, object], str]
                ) -> str:
    """TAGREFS of a block or line: its class's tag, then its score's."""
    references = [tag_ids[(kind, item.label)]]
    if item.score is not None:
        references.append(tag_ids[("score", f"{item.score:.4g}")])
    return " ".join(references)


def alto_to_xml(page: Page, created: Optional[datetime] = None) -> bytes:
    """Serialise a Page as ALTO 4.3 XML (see :func:`write_alto`)."""
    regions = _ordered_regions(page)
    lines = [line for line in page.lines if len(line.polygon) >= 2 or len(line.baseline) >= 2]
    tags = _wanted_tags(regions, lines)
    wanted = _tag_names(tags) + [region.id for region in regions] + [line.id for line in lines]
    # one xs:ID space: the page, the processing step, tags, blocks and lines
    legal = iter(_xml_ids(["page_1", "maskdla_processing", *wanted])[2:])
    root = ET.Element("alto", {
        "xmlns": ALTO_4_NAMESPACE, "xmlns:xsi": _XSI,
        "xsi:schemaLocation": f"{ALTO_4_NAMESPACE} "
                              "http://www.loc.gov/standards/alto/v4/alto-4-3.xsd"})
    description = ET.SubElement(root, "Description")
    ET.SubElement(description, "MeasurementUnit").text = "pixel"
    source = ET.SubElement(description, "sourceImageInformation")
    ET.SubElement(source, "fileName").text = page.image_filename
    processing = ET.SubElement(description, "Processing", {"ID": "maskdla_processing"})
    stamp = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    ET.SubElement(processing, "processingDateTime").text = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    software = ET.SubElement(processing, "processingSoftware")
    ET.SubElement(software, "softwareName").text = "maskdla"
    tag_ids = _write_tags(root, tags, legal)
    layout = ET.SubElement(root, "Layout")
    page_element = ET.SubElement(layout, "Page", {
        "ID": "page_1", "PHYSICAL_IMG_NR": "1", "WIDTH": str(int(page.width)),
        "HEIGHT": str(int(page.height))})
    space = ET.SubElement(page_element, "PrintSpace", {
        "HPOS": "0", "VPOS": "0", "WIDTH": str(int(page.width)), "HEIGHT": str(int(page.height))})
    region_ids = [next(legal) for _ in regions]
    line_ids = {id(line): next(legal) for line in lines}
    lines_of: Dict[str, List[TextLine]] = {}
    for line in lines:
        lines_of.setdefault(line.region_id, []).append(line)
    for region, region_id in zip(regions, region_ids):
        name = _block_element(region)
        block = ET.SubElement(space, name, {"ID": region_id, **_box(region.polygon),
                                            "TAGREFS": _references(region, "class", tag_ids)})
        ET.SubElement(ET.SubElement(block, "Shape"), "Polygon",
                      {"POINTS": _points(region.polygon)})
        if name == "TextBlock":  # only TextBlock may hold TextLines
            for line in lines_of.pop(region.id, []):
                _write_line(block, line, line_ids[id(line)], _references(line, "line", tag_ids))
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _write_line(block: ET.Element, line: TextLine, line_id: str, tag_refs: str) -> None:
    outline = line.polygon if len(line.polygon) >= 2 else line.baseline
    attributes = {"ID": line_id, "TAGREFS": tag_refs, **_box(outline)}
    if len(line.baseline) >= 2:
        attributes["BASELINE"] = _points(line.baseline)
    element = ET.SubElement(block, "TextLine", attributes)
    if len(line.polygon) >= 3:
        ET.SubElement(ET.SubElement(element, "Shape"), "Polygon", {"POINTS": _points(line.polygon)})
    ET.SubElement(element, "String", {"CONTENT": line.text or ""})  # the schema needs one


def write_alto(page: Page, path: PathLike, *, created: Optional[datetime] = None) -> None:
    """Write ``page`` as ALTO 4.3 (pixel units), atomically.

    Each region is a block (its own ALTO kind; a PAGE kind's counterpart, e.g.
    ImageRegion -> Illustration; else TextBlock) with its bounding box, its outline in
    ``Shape/Polygon`` and ``TAGREFS`` to an ``OtherTag`` whose LABEL is its class (one tag
    per class, as eScriptorium writes them); ``Region.score`` goes to a second referenced
    tag ``OtherTag TYPE="score" LABEL="0.97"``. Blocks follow ``page.reading_order``, then
    the remaining regions in list order (ALTO's implicit reading order). Text lines go
    under their TextBlock (:func:`holds_lines`; lines of other blocks are left out) with
    box, ``BASELINE``, ``Shape/Polygon``, one ``String`` holding the text, and ``TAGREFS``
    to an ``OtherTag`` of their class (``DESCRIPTION="line type HeadingLine"``, as
    eScriptorium writes line types) and to their score's tag. Coordinates are rounded to
    non-negative integers; ids that are not legal XML ids are rewritten (tags, blocks and
    lines share one id space). ``created`` (default now, UTC) stamps
    ``Processing/processingDateTime``; a fixed one makes the file byte-identical.
    """
    write_bytes_atomic(path, alto_to_xml(page, created))
