"""The embedded default corpus: synthetic music-manuscript pages with PAGE-XML ground truth.

Pages are shaped like the study's VORAU-253 corpus (see docs/data.md): portrait parchment
(2,700 x 3,900 px aspect) with noise and stains; rows of a staff (4 or 5 red-ish ruled lines
with dark neume-like marks, a slight page skew and a per-row curvature) over a lyrics line of
handwriting-like strokes; 0 to 2 coloured drop capitals a page, each spanning a staff and its
lyrics. 7 to 13 rows give 14 to 28 regions a page, in the classes ``staff`` (PAGE
``MusicRegion``), ``lyrics`` (``TextRegion`` with ``custom="structure {type:lyrics;}"``) and
``drop-capital`` (``TextRegion`` with ``@type="drop-capital"``).

Everything is drawn with numpy and PIL from one seed, so a corpus is byte-identical for the
same parameters on the same machine. Region polygons follow the drawn content (they bend
with the row's skew and curvature).

The written corpus follows the dataset folder convention::

    DATA/train/*.jpg   DATA/train/page/*.xml   DATA/test/...   DATA/synthetic.json
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from maskdla.data.page import Page, Point, Region
from maskdla.data.pagexml import page_to_xml
from maskdla.errors import InputError

#: the corpus's classes as written in its PAGE-XML (the Dataset orders them by name)
CLASSES: Tuple[str, ...] = ("staff", "lyrics", "drop-capital")
#: height / width of a VORAU-253 page scan (2,700 x 3,900 px)
PAGE_ASPECT = 3900 / 2700
DEFAULT_WIDTH = 1000
DEFAULT_PAGES = 228
DEFAULT_TRAIN = 128
#: bump when the drawing changes, so that cached corpora of an older look are not reused
GENERATOR_VERSION = 1
JPEG_QUALITY = 90

_STAFF_INK = (168, 52, 40)     # red-ish ruling
_NEUME_INK = (38, 30, 26)      # near-black notes
_TEXT_INK = (74, 50, 34)       # brown iron-gall handwriting
_CAPITAL_INKS = ((176, 38, 30), (38, 62, 150))  # red or blue initials


@dataclass
class _Row:
    """Geometry of one staff + lyrics row, in page pixels (before the row's bend)."""

    x_start: float        # left end of staff and lyrics (right of a drop capital)
    x_end: float
    staff_top: float      # y of the top staff line
    lines: int            # staff lines (4 or 5)
    spacing: float        # distance between staff lines
    baseline: float       # y of the lyrics' baseline
    skew: float           # page skew, dy/dx
    bend: float           # amplitude of the row's curvature, px

    def dy(self, x: np.ndarray) -> np.ndarray:
        """Vertical displacement at x: the page skew plus a half-sine bend along the row."""
        t = (x - self.x_start) / max(self.x_end - self.x_start, 1.0)
        return self.skew * (x - self.x_start) + self.bend * np.sin(np.pi * np.clip(t, 0, 1))

    def dy_at(self, x: float) -> float:
        """:meth:`dy` for one x (plain floats: drawing calls it for every mark)."""
        t = min(max((x - self.x_start) / max(self.x_end - self.x_start, 1.0), 0.0), 1.0)
        return self.skew * (x - self.x_start) + self.bend * math.sin(math.pi * t)

    @property
    def staff_bottom(self) -> float:
        return self.staff_top + (self.lines - 1) * self.spacing

    # Vertical extents of the regions relative to the lines / baseline, in spacings.
    # Neumes reach half a spacing past the outer lines, their marks a bit further.
    STAFF_MARGIN = 0.8
    LYRICS_ABOVE = 1.45   # ascenders
    LYRICS_BELOW = 0.5    # descenders


#: a row's staff margins, staff-to-lyrics gap and lyrics band, in staff-line spacings
_ROW_SPACINGS = 2 * _Row.STAFF_MARGIN + 0.35 + _Row.LYRICS_ABOVE + _Row.LYRICS_BELOW


def _page_size(width: int) -> Tuple[int, int]:
    return width, int(round(width * PAGE_ASPECT))


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Parchment: a base colour, a low-frequency shading field, fine grain and a few stains."""
    base = np.array([rng.uniform(214, 232), rng.uniform(194, 212), rng.uniform(152, 176)],
                    dtype=np.float32)
    shading_grid = rng.normal(1.0, 0.035, size=(9, 6)).astype(np.float32)
    shading = np.asarray(Image.fromarray(shading_grid, mode="F").resize((width, height),
                                                                       Image.BICUBIC))
    # stains are drawn on a small canvas and blurred there: blurring at full size is slow
    small = (max(8, width // 8), max(8, height // 8))
    stain_canvas = Image.new("L", small, 0)
    draw = ImageDraw.Draw(stain_canvas)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0, small[0]), rng.uniform(0, small[1])
        rx, ry = rng.uniform(0.03, 0.15) * small[0], rng.uniform(0.03, 0.12) * small[1]
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=int(rng.integers(60, 150)))
    stain_canvas = stain_canvas.filter(ImageFilter.GaussianBlur(radius=max(1.0, small[0] / 60)))
    stain = np.asarray(stain_canvas.resize((width, height), Image.BILINEAR), dtype=np.float32)
    stain *= 1.0 / 255.0
    # scanner noise plus a mid-frequency parchment texture; like a real scan, the JPEG of a
    # 2,700 x 3,900 px page at quality 90 is about 2 MB
    texture_grid = rng.normal(0.0, 5.0, size=(max(2, height // 4), max(2, width // 4)))
    grain = np.asarray(Image.fromarray(texture_grid.astype(np.float32), mode="F")
                       .resize((width, height), Image.BILINEAR))
    grain = grain + rng.integers(-3, 4, size=(height, width), dtype=np.int16)
    tint = (38, 52, 66)  # stains darken blue most: brownish
    channels = []
    for value, stain_tint in zip(base, tint):
        # per channel on contiguous planes: much faster than broadcasting over [H, W, 3]
        channel = shading * value
        channel -= stain * stain_tint
        channel += grain
        np.clip(channel, 0, 255, out=channel)
        channels.append(Image.fromarray(channel.astype(np.uint8), mode="L"))
    return Image.merge("RGB", channels)


def _band_polygon(row: _Row, x0: float, x1: float, top: float, bottom: float,
                  width: int, height: int, samples: int = 10) -> List[Point]:
    """A polygon between the bent lines y = top + dy(x) and y = bottom + dy(x), x0 <= x <= x1."""
    xs = np.linspace(x0, x1, samples)
    dy = row.dy(xs)
    upper = [(x, top + d) for x, d in zip(xs, dy)]
    lower = [(x, bottom + d) for x, d in zip(xs[::-1], dy[::-1])]
    return _integer_points(upper + lower, width, height)


def _integer_points(points: Sequence[Tuple[float, float]], width: int,
                    height: int) -> List[Point]:
    """Round to integer pixels (as PAGE stores them) and clip to the page."""
    return [(float(min(max(round(x), 0), width - 1)), float(min(max(round(y), 0), height - 1)))
            for x, y in points]


def _draw_staff(draw: ImageDraw.ImageDraw, rng: np.random.Generator, row: _Row) -> None:
    s = row.spacing
    xs = np.linspace(row.x_start, row.x_end, 24)
    dy = row.dy(xs)
    line_width = max(1, int(round(s * 0.09)))
    for line in range(row.lines):
        y = row.staff_top + line * s
        draw.line([(x, y + d) for x, d in zip(xs, dy)], fill=_STAFF_INK, width=line_width)
    # neumes: groups of 1-3 rhombic "nail" heads on lines and spaces, stems toward the middle
    half_positions = 2 * (row.lines - 1)  # 0 = top line, half_positions = bottom line
    head = s * rng.uniform(0.32, 0.4)
    stem_width = max(1, int(round(s * 0.1)))
    x = row.x_start + rng.uniform(0.6, 1.4) * s
    while x < row.x_end - s:
        position = int(rng.integers(-1, half_positions + 2))
        for note in range(int(rng.integers(1, 4))):
            if x >= row.x_end - 0.6 * s:
                break
            pos = min(max(position - note * int(rng.integers(-1, 2)), -1), half_positions + 1)
            y = row.staff_top + pos * s / 2 + row.dy_at(x)
            draw.polygon([(x - head, y), (x, y - head), (x + head, y), (x, y + head)],
                         fill=_NEUME_INK)
            if rng.random() < 0.5:
                toward_middle = 1 if pos < half_positions / 2 else -1
                draw.line([(x + head * 0.8, y), (x + head * 0.8, y + toward_middle * 1.1 * s)],
                          fill=_NEUME_INK, width=stem_width)
            x += rng.uniform(0.7, 1.0) * s
        x += rng.uniform(0.6, 2.2) * s


def _draw_lyrics(draw: ImageDraw.ImageDraw, rng: np.random.Generator,
                 row: _Row) -> Tuple[float, float]:
    """Handwriting-like words on the row's baseline; returns the x extent of the ink."""
    s = row.spacing
    x_height = 0.85 * s
    pen = max(1, int(round(s * 0.13)))
    x = row.x_start + rng.uniform(0.1, 1.0) * s
    first = x
    last = x
    while True:
        letters = int(rng.integers(2, 8))
        letter_width = s * rng.uniform(0.42, 0.6)
        if x + letters * letter_width > row.x_end - 0.2 * s:
            break
        for _ in range(letters):
            base = row.baseline + row.dy_at(x)
            kind = rng.random()
            if kind < 0.18:    # ascender: a tall stroke with a head serif
                points = [(x, base - 1.4 * s), (x + 0.1 * s, base - 1.3 * s),
                          (x + 0.1 * s, base), (x + letter_width * 0.6, base - 0.15 * s)]
            elif kind < 0.3:   # descender
                points = [(x, base - x_height), (x + 0.12 * s, base - x_height + 0.1 * s),
                          (x + 0.12 * s, base + 0.45 * s), (x - 0.1 * s, base + 0.4 * s)]
            elif kind < 0.5:   # round letter
                w = letter_width * 0.8
                points = [(x + w, base - x_height * 0.8), (x + w * 0.5, base - x_height),
                          (x, base - x_height * 0.6), (x + w * 0.1, base - 0.1 * s),
                          (x + w * 0.6, base), (x + w, base - x_height * 0.3)]
            else:              # minims, the bulk of Gothic script
                w = letter_width * 0.8
                points = [(x, base - x_height + 0.12 * s), (x + 0.12 * s, base - x_height),
                          (x + 0.12 * s, base - 0.05 * s), (x + w * 0.5, base - x_height * 0.9),
                          (x + w, base - x_height), (x + w, base)]
            draw.line(points, fill=_TEXT_INK, width=pen, joint="curve")
            last = max(last, max(p[0] for p in points))
            first = min(first, min(p[0] for p in points))
            x += letter_width
        x += rng.uniform(0.6, 1.6) * s  # gap between syllables / words
    return first - pen, last + pen


def _draw_capital(draw: ImageDraw.ImageDraw, rng: np.random.Generator,
                  box: Tuple[float, float, float, float]) -> None:
    """A coloured initial filling ``box``: a heavy stem, a bowl, a bar and flourishes."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ink = _CAPITAL_INKS[int(rng.integers(0, len(_CAPITAL_INKS)))]
    stroke = max(2, int(round(0.13 * w)))
    half = stroke / 2
    draw.rectangle([x0, y0 + 0.05 * h, x0 + stroke, y1 - 0.05 * h], fill=ink)  # stem
    draw.arc([x0 + half, y0 + half, x1 - half, y1 - half], start=int(rng.integers(-100, -60)),
             end=int(rng.integers(60, 100)), fill=ink, width=stroke)              # bowl
    bar_y = y0 + h * rng.uniform(0.4, 0.6)
    draw.line([(x0, bar_y), (x0 + w * rng.uniform(0.6, 0.95), bar_y)], fill=ink,
              width=max(1, stroke // 2))
    draw.rectangle([x0, y0, x0 + 0.45 * w, y0 + 0.1 * h], fill=ink)               # top serif
    draw.rectangle([x0, y1 - 0.1 * h, x0 + 0.45 * w, y1], fill=ink)               # foot serif
    for _ in range(int(rng.integers(2, 6))):  # decoration inside the letter
        cx, cy = x0 + w * rng.uniform(0.35, 0.75), y0 + h * rng.uniform(0.25, 0.75)
        r = w * rng.uniform(0.03, 0.06)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_NEUME_INK)


def _row_capital(draw: ImageDraw.ImageDraw, rng: np.random.Generator, row: _Row
                 ) -> Tuple[float, float, float, float]:
    """Draw a drop capital at the left end of ``row``, as tall as its staff and lyrics;
    returns its box (x0, y0, x1, y1)."""
    cap_top = row.staff_top - _Row.STAFF_MARGIN * row.spacing
    cap_bottom = row.baseline + _Row.LYRICS_BELOW * row.spacing
    cap_width = (cap_bottom - cap_top) * rng.uniform(0.65, 0.85)
    shift = row.dy_at(row.x_start)
    box = (row.x_start, cap_top + shift, row.x_start + cap_width, cap_bottom + shift)
    _draw_capital(draw, rng, box)
    return box


def render_page(seed: Union[int, Sequence[int]], width: int = DEFAULT_WIDTH,
                image_filename: str = "page.jpg", *, rows: Optional[int] = None,
                capitals: Optional[int] = None) -> Tuple[Image.Image, Page]:
    """Draw one synthetic page.

    Args:
        seed: seed (or seed sequence) of the page's random generator.
        width: image width in px; the height follows the corpus's 1:1.444 aspect.
        image_filename: the name stored in the returned :class:`Page`.
        rows: staff + lyrics rows (default random, 7 to 13).
        capitals: drop capitals, at most ``rows`` (default random, 0 to 2); a page has
            ``2 * rows + capitals`` regions.

    Returns:
        (RGB image of ``width`` x ``round(width * 1.444)``, the :class:`Page` with its
        regions in reading order: per row an optional drop capital, the staff, the lyrics).
    """
    if width < 64:
        raise ValueError(f"synthetic pages need a width of at least 64 px, got {width}")
    rng = np.random.default_rng(seed)
    width, height = _page_size(width)
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)

    left = width * rng.uniform(0.08, 0.12)
    right = width * (1 - rng.uniform(0.06, 0.09))
    top = height * rng.uniform(0.06, 0.08)
    bottom = height * (1 - rng.uniform(0.07, 0.10))
    drawn_rows = int(rng.integers(7, 14))
    rows = drawn_rows if rows is None else rows
    if rows < 1:
        raise ValueError(f"a page needs at least one row, got {rows}")
    lines = int(rng.choice([4, 5]))
    pitch = (bottom - top) / rows
    # a row is: margin, staff, margin, gap, lyrics band, gap to the next row (in spacings)
    spacing = pitch / ((lines - 1) + _ROW_SPACINGS + rng.uniform(0.5, 0.9))
    skew = math.tan(math.radians(rng.uniform(-0.3, 0.3)))
    drawn_capitals = int(rng.choice([0, 1, 1, 2]))
    capitals = min(drawn_capitals if capitals is None else capitals, rows)
    capital_rows = set(rng.choice(rows, size=capitals, replace=False).tolist())

    regions: List[Region] = []

    def add(kind: str, label: str, polygon: List[Point]) -> None:
        regions.append(Region(id=f"r{len(regions) + 1}", kind=kind, label=label,
                              polygon=polygon))

    for index in range(rows):
        staff_top = top + index * pitch + _Row.STAFF_MARGIN * spacing
        staff_bottom = staff_top + (lines - 1) * spacing
        baseline = staff_bottom + (_Row.STAFF_MARGIN + 0.35 + _Row.LYRICS_ABOVE) * spacing
        x_start = left
        x_end = right - width * rng.uniform(0.0, 0.03)
        if index == rows - 1 and rng.random() < 0.5:  # a short last row
            x_end = left + (right - left) * rng.uniform(0.45, 0.9)
        row = _Row(x_start, x_end, staff_top, lines, spacing, baseline, skew,
                   bend=rng.uniform(-0.15, 0.15) * spacing)
        if index in capital_rows:
            box = _row_capital(draw, rng, row)
            add("TextRegion", "drop-capital",
                _integer_points([(box[0], box[1]), (box[2], box[1]), (box[2], box[3]),
                                 (box[0], box[3])], width, height))
            row.x_start = box[2] + rng.uniform(0.3, 0.7) * spacing
        _draw_staff(draw, rng, row)
        add("MusicRegion", "staff",
            _band_polygon(row, row.x_start, row.x_end,
                          staff_top - _Row.STAFF_MARGIN * spacing,
                          staff_bottom + _Row.STAFF_MARGIN * spacing, width, height))
        ink_start, ink_end = _draw_lyrics(draw, rng, row)
        add("TextRegion", "lyrics",
            _band_polygon(row, ink_start, ink_end,
                          baseline - _Row.LYRICS_ABOVE * spacing,
                          baseline + _Row.LYRICS_BELOW * spacing, width, height))

    page = Page(image_filename=image_filename, width=width, height=height, regions=regions,
                reading_order=[region.id for region in regions])
    return image, page



#: fixed PAGE Metadata timestamps, so that a corpus is byte-identical run after run
_CORPUS_TIME = datetime(2021, 9, 1, tzinfo=timezone.utc)


def _check_parameters(pages: int, train: int, width: int) -> None:
    if pages < 1:
        raise InputError(f"--pages must be at least 1, got {pages}")
    if not 0 <= train <= pages:
        raise InputError(f"--train must be between 0 and --pages ({pages}), got {train}")
    if width < 64:
        raise InputError(f"--width must be at least 64 px, got {width}")


def generate_corpus(out_dir: Union[str, "os.PathLike[str]"], pages: int = DEFAULT_PAGES,
                    train: int = DEFAULT_TRAIN, seed: int = 0, width: int = DEFAULT_WIDTH,
                    progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Write a synthetic corpus in the dataset folder convention.

    Page ``i`` (0-based) is drawn from the seed sequence ``(seed, i)``; pages ``0 ..
    train - 1`` go to ``train/``, the rest to ``test/``, as ``synth-NNNN.jpg`` (JPEG quality
    90) and ``page/synth-NNNN.xml``. ``synthetic.json`` records the parameters.

    Everything is written into a temporary sibling folder that is renamed to ``out_dir``
    at the end, so an interrupted run leaves no half-written corpus.

    Args:
        out_dir: the corpus folder to create; it must not exist or be empty.
        pages, train: pages in all, and how many of them form the training split.
        seed: the corpus seed.
        width: page width in px (height = round(width * 3900 / 2700)).
        progress: called as ``progress(done, pages)`` after each page.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        InputError: bad parameters, or ``out_dir`` exists and is not empty.
    """
    _check_parameters(pages, train, width)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError("output folder exists and is not empty", out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        for index in range(pages):
            split = "train" if index < train else "test"
            stem = f"synth-{index + 1:04d}"
            image, page = render_page((seed, index), width, image_filename=f"{stem}.jpg")
            (temporary / split / "page").mkdir(parents=True, exist_ok=True)
            image.save(temporary / split / f"{stem}.jpg", quality=JPEG_QUALITY)
            xml = page_to_xml(page, created=_CORPUS_TIME)
            (temporary / split / "page" / f"{stem}.xml").write_bytes(xml)
            if progress is not None:
                progress(index + 1, pages)
        description = {"generator": "maskdla.data.synthetic", "version": GENERATOR_VERSION,
                       "pages": pages, "train": train, "test": pages - train, "seed": seed,
                       "width": width, "height": _page_size(width)[1], "classes": list(CLASSES)}
        (temporary / "synthetic.json").write_text(json.dumps(description, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.rename(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def cache_root() -> Path:
    """Where generated corpora are cached: ``$MASKDLA_CACHE`` or ``~/.cache/maskdla``."""
    configured = os.environ.get("MASKDLA_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "maskdla"


def default_corpus(pages: int = DEFAULT_PAGES, train: int = DEFAULT_TRAIN, seed: int = 0,
                   width: int = DEFAULT_WIDTH,
                   progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """The embedded default corpus: generated on first use, then reused from the cache.

    The folder is ``cache_root() / synthetic-v{version}-p{pages}-t{train}-s{seed}-w{width}``;
    it only ever appears complete (see :func:`generate_corpus`). Two processes generating
    it at once both succeed; the second one's copy is discarded.

    Returns:
        the corpus folder (``train/`` and ``test/`` inside).
    """
    _check_parameters(pages, train, width)
    folder = cache_root() / (f"synthetic-v{GENERATOR_VERSION}-p{pages}-t{train}-s{seed}"
                             f"-w{width}")
    if (folder / "synthetic.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # generate next to the final folder, then move it into place; losing a race to another
    # process is fine, its corpus is identical
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.staging-"))
    try:
        generate_corpus(staging / "corpus", pages, train, seed, width, progress)
        try:
            os.rename(staging / "corpus", folder)
        except OSError:
            if not (folder / "synthetic.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
