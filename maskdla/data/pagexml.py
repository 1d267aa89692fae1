"""Read and write PAGE-XML (PRImA page content) files.

:func:`read_page` reads the 2010-03-19, 2013-07-15, 2017-07-15 and 2019-07-15 schemas (any
PRImA ``pagecontent`` namespace, http or https) into a :class:`~maskdla.data.page.Page`,
resolving each region's class and repairing what real files get wrong (see
docs/data.md; the rules are shared with the ALTO reader, :mod:`maskdla.data.reading`).
:func:`write_page` writes PAGE 2019-07-15 that validates against the official schema.

The parser refuses any document type declaration: PAGE files never need one, and refusing
it closes external entities (XXE) and entity-expansion bombs at once.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Dict, Iterator, List, Mapping, Optional, Sequence
from xml.etree import ElementTree as ET

from maskdla.data.page import DEFAULT_LINE_LABEL, Page, Point, Region, TextLine
from maskdla.data.reading import (ClassMap, PathLike, RepairReport, admit_region,
                                  check_page_size, children, clean_polygon, count_duplicate_ids,
                                  find_image, finite_points, image_candidates, parse_class_map,
                                  positive_int, read_document)
from maskdla.errors import InputError
from maskdla.files import write_bytes_atomic

__all__ = ["read_page", "write_page", "page_to_xml", "parse_points", "parse_custom",
           "RepairReport", "parse_class_map", "structure_custom", "clean_polygon", "find_image", "image_candidates"]

PAGE_2019_NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
_PAGE_NAMESPACE = re.compile(r"^https?://schema\.primaresearch\.org/PAGE/gts/pagecontent/[\d-]+$")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"

#: Region elements a PAGE 2019 ``Page`` may hold.
REGION_ELEMENTS = (
    "TextRegion", "ImageRegion", "LineDrawingRegion", "GraphicRegion", "TableRegion",
    "ChartRegion", "MapRegion", "SeparatorRegion", "MathsRegion", "ChemRegion", "MusicRegion",
    "AdvertRegion", "NoiseRegion", "UnknownRegion", "CustomRegion")
#: The values PAGE 2019 allows in ``TextRegion/@type`` (pc:TextTypeSimpleType).
TEXT_REGION_TYPES = (
    "paragraph", "heading", "caption", "header", "footer", "page-number", "drop-capital",
    "credit", "floating", "signature-mark", "catch-word", "marginalia", "footnote",
    "footnote-continued", "endnote", "TOC-entry", "list-label", "other")
#: Labels written as ``MusicRegion`` whatever the region's kind.
MUSIC_LABELS = ("staff", "music")
#: PAGE element written for a region read from ALTO (other kinds: see _region_element).
ALTO_KINDS = {"Illustration": "ImageRegion", "GraphicalElement": "SeparatorRegion"}


# ---------------------------------------------------------------------------- parsing

def parse_points(element: Optional[ET.Element]) -> List[Point]:
    """Points of a ``Coords``/``Baseline`` element: ``@points="x,y x,y"`` or PAGE 2010's
    ``<Point x= y=/>`` children. Raises ValueError on unreadable numbers."""
    if element is None:
        return []
    if element.get("points") is not None:
        return finite_points(token.split(",") for token in element.get("points", "").split())
    return finite_points([point.get("x", ""), point.get("y", "")]
                         for point in children(element, "Point"))


_CUSTOM_BLOCK = re.compile(r"([\w-]+)\s*\{([^}]*)\}")
_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")

def parse_custom(custom: Optional[str]) -> Dict[str, Dict[str, str]]:
    """Parse a ``custom`` attribute, ``"readingOrder {index:3;} structure {type:lyrics;}"``
    -> ``{"readingOrder": {"index": "3"}, "structure": {"type": "lyrics"}}``, decoding
    Transkribus escapes (``\\u0020`` -> space) in the values."""
    blocks: Dict[str, Dict[str, str]] = {}
    for name, body in _CUSTOM_BLOCK.findall(custom or ""):
        block = blocks.setdefault(name, {})
        for item in body.split(";"):
            key, colon, value = item.partition(":")
            if colon:
                block[key.strip()] = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value.strip())
    return blocks


def _escape_custom(value: str) -> str:
    """Escape a value for a ``custom`` block the Transkribus way (``\\uXXXX``)."""
    return "".join(c if c.isalnum() or c in "-_." else f"\\u{ord(c):04x}" for c in value)


def structure_custom(label: str) -> str:
    """The ``custom`` block naming a region's or line's class, as Transkribus writes it and
    eScriptorium reads it: ``structure {type:MainZone;}`` (escaped)."""
    return f"structure {{type:{_escape_custom(label)};}}"


def resolve_label(element: ET.Element, custom: Mapping[str, Mapping[str, str]]) -> str:
    """Class of a region: ``custom`` structure type, else ``@type``, else the element name."""
    return custom.get("structure", {}).get("type") or element.get("type") or element.tag



# --------------------------------------------------------------------------- reading

def _region_elements(parent: ET.Element) -> Iterator[ET.Element]:
    """Every ``*Region`` element under ``parent``, nested ones after their parent."""
    for child in parent:
        if child.tag.endswith("Region"):
            yield child
            yield from _region_elements(child)


def _reading_order(group: ET.Element) -> Iterator[str]:
    """Region ids of a ReadingOrder group, flattened; indexed children sorted by @index."""
    def index(child: ET.Element) -> int:
        text = child.get("index", "")
        return int(text) if text.lstrip("-").isdigit() else 0

    for child in sorted(group, key=index):  # stable: unindexed children keep file order
        if child.get("regionRef"):
            yield child.get("regionRef", "")
        if "Group" in child.tag:
            yield from _reading_order(child)


def _score(custom: Mapping[str, Mapping[str, str]]) -> Optional[float]:
    """``custom="score {value:0.97;}"`` -> 0.97; None when absent or not a number."""
    try:
        return float(custom["score"]["value"])
    except (KeyError, ValueError):
        return None


def read_page(path: PathLike, elements: Optional[Sequence[str]] = None,
              class_map: Optional[ClassMap] = None, report: Optional[RepairReport] = None,
              fold_subtypes: bool = False) -> Page:
    """Read a PAGE-XML file.

    Args:
        path: the XML file.
        elements: region element names to keep (e.g. ``["TextRegion", "MusicRegion"]``);
            default every ``*Region`` element, nested ones included. ALTO names in the
            list are allowed (for mixed folders) and keep nothing here.
        class_map: renames classes after resolution (``{"paragraph": "text"}``); a class
            mapped to None or "" is dropped; the key ``*`` matches every class not named.
        report: counts of skipped/repaired/clipped/dropped regions, regions per class and
            one note per change are added to it.
        fold_subtypes: fold SegmOnto sub-types (``MainZone#1``, ``MainZone:column``) to
            their main type before the class map.

    Returns:
        The :class:`Page`, regions in reading order when the file gives one, else in file
        order.

    Raises:
        InputError: unreadable or non-PAGE XML, a DTD, or a page size that cannot be known.
    """
    report = report if report is not None else RepairReport()
    root = read_document(path, elements, "PcGts", _PAGE_NAMESPACE, "a PAGE-XML")
    page_element = next(iter(children(root, "Page")), None)
    if page_element is None:
        raise InputError("PAGE-XML without a Page element", path)
    image_name = page_element.get("imageFilename", "")
    width, height = check_page_size(
        (positive_int(page_element.get("imageWidth")), positive_int(page_element.get("imageHeight"))),
        find_image(path, image_name), image_name, report, path, "imageWidth/imageHeight")
    page = Page(image_filename=image_name, width=width, height=height)
    report.pages += 1
    for number, element in enumerate(_region_elements(page_element)):
        if elements is not None and element.tag not in elements:
            continue
        region_id = element.get("id") or f"region_{number}"
        custom = parse_custom(element.get("custom"))
        admitted = admit_region(
            resolve_label(element, custom),
            lambda: parse_points(next(iter(children(element, "Coords")), None)),
            region_id, (width, height), report, path, class_map, fold_subtypes)
        if admitted is None:
            continue
        label, polygon = admitted
        page.regions.append(Region(id=region_id, kind=element.tag, label=label, polygon=polygon,
                                   score=_score(custom)))
        page.lines.extend(_text_lines(element, region_id, path, report))
    count_duplicate_ids([region.id for region in page.regions], report, path)
    kept = {region.id for region in page.regions}
    for reading_order in children(page_element, "ReadingOrder"):
        order = list(dict.fromkeys(_reading_order(reading_order)))
        page.reading_order = [region_id for region_id in order if region_id in kept]
    if page.reading_order:
        position = {region_id: i for i, region_id in enumerate(page.reading_order)}
        page.regions.sort(key=lambda region: position.get(region.id, len(position)))
    return page


def _text_lines(region: ET.Element, region_id: str, path: PathLike,
                report: RepairReport) -> Iterator[TextLine]:
    for number, line in enumerate(children(region, "TextLine")):
        line_id = line.get("id") or f"{region_id}_line_{number}"
        try:
            polygon = parse_points(next(iter(children(line, "Coords")), None))
            baseline = parse_points(next(iter(children(line, "Baseline")), None))
        except ValueError:
            report.note(path, f"text line {line_id} skipped: unreadable points")
            continue
        unicode = [u.text or "" for equiv in children(line, "TextEquiv")[:1]
                   for u in children(equiv, "Unicode")]
        custom = parse_custom(line.get("custom"))
        yield TextLine(id=line_id, region_id=region_id, polygon=polygon, baseline=baseline,
                       text=unicode[0] if unicode else None,
                       label=custom.get("structure", {}).get("type") or DEFAULT_LINE_LABEL,
                       score=_score(custom))


# --------------------------------------------------------------------------- writing

_XML_ID = re.compile(r"^[A-Za-z_][\w.-]*$")


def _xml_ids(ids: Sequence[str]) -> List[str]:
    """Unique, schema-legal (xs:ID) versions of ``ids``, unchanged where already legal."""
    result: List[str] = []
    used = set()
    for original in ids:
        candidate = (original if _XML_ID.match(original)
                     else "r_" + re.sub(r"[^\w.-]", "_", original))
        unique, suffix = candidate, 1
        while unique in used:
            unique, suffix = f"{candidate}_{suffix}", suffix + 1
        used.add(unique)
        result.append(unique)
    return result


def _points(polygon: Sequence[Point]) -> str:
    """PAGE points string: non-negative integers (pc:PointsType)."""
    return " ".join(f"{max(0, round(x))},{max(0, round(y))}" for x, y in polygon)


def _region_element(region: Region) -> str:
    """Element name written for a region: MusicRegion for music labels, its own kind when
    PAGE 2019 has it, else TextRegion."""
    if region.label in MUSIC_LABELS or region.kind == "MusicRegion":
        return "MusicRegion"
    kind = ALTO_KINDS.get(region.kind, region.kind)
    return kind if kind in REGION_ELEMENTS else "TextRegion"


def holds_lines(region: Region) -> bool:
    """Whether :func:`write_page` writes ``region`` as a TextRegion, the one PAGE region
    that holds TextLines (its lines are left out otherwise)."""
    return _region_element(region) == "TextRegion"


def page_to_xml(page: Page, created: Optional[datetime] = None) -> bytes:
    """Serialise a Page as PAGE 2019-07-15 XML (see :func:`write_page`)."""
    # Namespace declarations as plain attributes: ElementTree's default_namespace option
    # refuses unqualified attribute names, which PAGE uses throughout.
    root = ET.Element("PcGts", {
        "xmlns": PAGE_2019_NAMESPACE, "xmlns:xsi": _XSI,
        "xsi:schemaLocation": f"{PAGE_2019_NAMESPACE} {PAGE_2019_NAMESPACE}/pagecontent.xsd"})
    metadata = ET.SubElement(root, "Metadata")
    stamp = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    now = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, text in (("Creator", "maskdla"), ("Created", now), ("LastChange", now)):
        ET.SubElement(metadata, name).text = text
    page_element = ET.SubElement(root, "Page", {
        "imageFilename": page.image_filename, "imageWidth": str(int(page.width)),
        "imageHeight": str(int(page.height))})

    # one xs:ID space for regions and lines (and the reading order group)
    legal = _xml_ids(["reading_order", *(region.id for region in page.regions),
                      *(line.id for line in page.lines)])[1:]
    ids = dict(zip((id(region) for region in page.regions), legal[:len(page.regions)]))
    first_id = {}
    for region in page.regions:
        first_id.setdefault(region.id, ids[id(region)])
    order = [first_id[i] for i in dict.fromkeys(page.reading_order) if i in first_id]
    order += [ids[id(r)] for r in page.regions if ids[id(r)] not in order]
    if order:
        group = ET.SubElement(ET.SubElement(page_element, "ReadingOrder"),
                              "OrderedGroup", {"id": "reading_order",
                                                    "caption": "Regions reading order"})
        for index, region_id in enumerate(order):
            ET.SubElement(group, "RegionRefIndexed",
                          {"index": str(index), "regionRef": region_id})

    position = {region_id: index for index, region_id in enumerate(order)}
    lines_of: Dict[str, List[TextLine]] = {}
    for line in page.lines:
        lines_of.setdefault(line.region_id, []).append(line)
    written_line_ids = dict(zip((id(line) for line in page.lines), legal[len(page.regions):]))
    for region in page.regions:
        element_name = _region_element(region)
        custom = (f"readingOrder {{index:{position[ids[id(region)]]};}} "
                  + structure_custom(region.label))
        if region.score is not None:
            custom += f" score {{value:{region.score:.4g};}}"
        attributes = {"id": ids[id(region)], "custom": custom}
        if element_name == "TextRegion" and region.label in TEXT_REGION_TYPES:
            attributes["type"] = region.label
        element = ET.SubElement(page_element, element_name, attributes)
        ET.SubElement(element, "Coords", {"points": _points(region.polygon)})
        if element_name != "TextRegion":
            continue  # only TextRegion may hold TextLines
        # pc:PointsType needs two points at least
        written = [line for line in lines_of.pop(region.id, []) if len(line.polygon) >= 2]
        for index, line in enumerate(written):
            line_element = ET.SubElement(element, "TextLine", {
                "id": written_line_ids[id(line)], "custom": _line_custom(line, index)})
            ET.SubElement(line_element, "Coords", {"points": _points(line.polygon)})
            if len(line.baseline) >= 2:
                ET.SubElement(line_element, "Baseline", {"points": _points(line.baseline)})
            if line.text is not None:
                equiv = ET.SubElement(line_element, "TextEquiv")
                ET.SubElement(equiv, "Unicode").text = line.text
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def _line_custom(line: TextLine, index: int) -> str:
    """A TextLine's ``custom``: its index in its region, its class and its score
    (Transkribus style, as for regions)."""
    custom = f"readingOrder {{index:{index};}} " + structure_custom(line.label)
    if line.score is not None:
        custom += f" score {{value:{line.score:.4g};}}"
    return custom


def write_page(page: Page, path: PathLike, created: Optional[datetime] = None) -> None:
    """Write ``page`` as PAGE 2019-07-15 XML, atomically.

    Every region carries its class in ``custom="structure {type:...;}"`` (Transkribus
    style; escaped) and its reading-order index; TextRegions also get ``@type`` when the
    class is one of :data:`TEXT_REGION_TYPES`. Labels in :data:`MUSIC_LABELS` and regions
    of kind MusicRegion become ``MusicRegion``; kinds PAGE 2019 lacks become TextRegion.
    ``Region.score`` goes to ``custom="score {value:...;}"``. The reading order is
    ``page.reading_order``, then the remaining regions in list order. Coordinates are
    rounded to non-negative integers, as the schema requires; ids that are not legal XML
    ids are rewritten (regions and lines share one id space). Text lines are written under
    their TextRegion (:func:`holds_lines`; lines of other regions, and lines of fewer than
    two points, are left out) with ``Coords``, ``Baseline`` and ``TextEquiv``, their class
    in ``custom="structure {type:HeadingLine;}"``, their score in ``custom="score
    {value:...;}"`` and their index in the region in ``readingOrder``. ``created`` (default:
    now) stamps Metadata's Created and LastChange, in UTC; a fixed one makes the file
    byte-identical run after run.
    """
    write_bytes_atomic(path, page_to_xml(page, created))
