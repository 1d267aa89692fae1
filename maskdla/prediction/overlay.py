"""Predicted regions drawn over the page image (``python -m maskdla.predict --overlay``).

Each region is filled with its class colour, translucent, and outlined in the opaque
colour; each text line is outlined thinly and its baseline drawn thick in its line
class's colour; a legend in the top-right corner names the classes (with their region and
line counts). The study's colours are fixed: drop-capital blue, staff red, lyrics green;
other classes (region classes, then line classes) take the next colour of :data:`PALETTE`
in the order of the models' class lists.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Dict, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

from maskdla.data.image import read_displayed_rgb, to_rgb
from maskdla.data.page import Page
from maskdla.files import write_bytes_atomic

__all__ = ["STUDY_COLOURS", "PALETTE", "class_colours", "draw_overlay", "save_overlay"]

Colour = Tuple[int, int, int]
PathLike = Union[str, "os.PathLike[str]"]

#: the study's colours
STUDY_COLOURS: Dict[str, Colour] = {
    "drop-capital": (0, 90, 255),
    "staff": (230, 25, 35),
    "lyrics": (20, 170, 60),
}
#: further classes, in class-list order (distinct from the study's colours)
PALETTE: Tuple[Colour, ...] = (
    (255, 140, 0), (150, 60, 200), (0, 180, 190), (220, 0, 150), (140, 100, 40),
    (110, 110, 110), (180, 190, 0), (0, 110, 110), (250, 100, 120), (70, 40, 160),
)
#: fill opacity of a region (0-255)
FILL_ALPHA = 80


def class_colours(classes: Sequence[str]) -> Dict[str, Colour]:
    """Colour of each class: the study's where it has one, else the palette in order
    (cycling when there are more classes than colours)."""
    colours: Dict[str, Colour] = {}
    others = iter(PALETTE * (len(classes) // len(PALETTE) + 1))
    for name in classes:
        colours[name] = STUDY_COLOURS.get(name) or next(others)
    return colours


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def draw_overlay(image: Image.Image, page: Page, classes: Sequence[str] = (),
                 line_classes: Sequence[str] = ()) -> Image.Image:
    """The page's regions, text lines and baselines drawn over ``image`` (any mode;
    converted to RGB).

    Polygons are in the page's pixels; an image of another size (e.g. a thumbnail) gets
    them scaled. ``classes`` and ``line_classes`` fix the palette order (default: labels
    in order of appearance). Returns a new RGB image.
    """
    base = to_rgb(image).convert("RGBA")  # 16-bit grey scaled, not clipped to white
    scale_x = base.width / page.width if page.width else 1.0
    scale_y = base.height / page.height if page.height else 1.0
    labels = list(dict.fromkeys(list(classes) + [region.label for region in page.regions]))
    line_labels = list(dict.fromkeys(list(line_classes) + [line.label for line in page.lines]))
    colours = class_colours(list(dict.fromkeys(labels + line_labels)))
    line_width = max(2, round(min(base.size) / 600))

    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for region in page.regions:
        points = [(x * scale_x, y * scale_y) for x, y in region.polygon]
        if len(points) >= 3:
            draw.polygon(points, fill=colours[region.label] + (FILL_ALPHA,))
    composed = Image.alpha_composite(base, layer)
    draw = ImageDraw.Draw(composed)
    for region in page.regions:
        points = [(x * scale_x, y * scale_y) for x, y in region.polygon]
        if len(points) >= 3:
            draw.line(points + points[:1], fill=colours[region.label] + (255,),
                      width=line_width, joint="curve")
    _draw_lines(draw, page, colours, (scale_x, scale_y), line_width)

    counts: Dict[str, int] = {}
    for region in page.regions:
        counts[region.label] = counts.get(region.label, 0) + 1
    line_counts: Dict[str, int] = {}
    for line in page.lines:
        line_counts[line.label] = line_counts.get(line.label, 0) + 1
    entries = [(label, colours[label], f"{counts.get(label, 0)}") for label in labels
               if label in counts or label in classes]
    entries += [(label, colours[label], f"{line_counts.get(label, 0)} lines")
                for label in line_labels if label in line_counts or label in line_classes]
    if entries:
        _draw_legend(draw, composed.size, entries)
    return composed.convert("RGB")


def _draw_lines(draw: ImageDraw.ImageDraw, page: Page, colours: Dict[str, Colour],
                scale: Tuple[float, float], width: int) -> None:
    """Each text line's polygon, thin, and its baseline, at the regions' outline width,
    in its line class's colour."""
    for line in page.lines:
        colour = colours[line.label] + (255,)
        outline = [(x * scale[0], y * scale[1]) for x, y in line.polygon]
        if len(outline) >= 3:
            draw.line(outline + outline[:1], fill=colour, width=max(1, width // 2))
        baseline = [(x * scale[0], y * scale[1]) for x, y in line.baseline]
        if len(baseline) >= 2:
            draw.line(baseline, fill=colour, width=width, joint="curve")


def _draw_legend(draw: ImageDraw.ImageDraw, size: Tuple[int, int],
                 entries: Sequence[Tuple[str, Colour, str]]) -> None:
    """A white box in the top-right corner: one swatch and ``name (count)`` per class."""
    font_size = max(12, round(min(size) / 60))
    font = _font(font_size)
    texts = [f"{name} ({count})" for name, _, count in entries]
    text_width = max(draw.textlength(text, font=font) for text in texts)
    swatch, padding = font_size, font_size // 2
    row = font_size + padding
    width = int(padding * 3 + swatch + text_width)
    height = int(padding + row * len(entries))
    left, top = size[0] - width - padding, padding
    draw.rectangle([left, top, left + width, top + height], fill=(255, 255, 255, 230),
                   outline=(0, 0, 0, 255))
    for number, ((_, colour, _), text) in enumerate(zip(entries, texts)):
        y = top + padding + number * row
        draw.rectangle([left + padding, y, left + padding + swatch, y + swatch],
                       fill=colour + (255,), outline=(0, 0, 0, 255))
        draw.text((left + 2 * padding + swatch, y), text, fill=(0, 0, 0, 255), font=font)


def save_overlay(image_path: PathLike, page: Page, classes: Sequence[str],
                 out_path: PathLike, quality: int = 90, line_classes: Sequence[str] = ()
                 ) -> None:
    """Draw the page over the image file ``image_path`` as displayed (EXIF orientation
    applied) and write ``out_path`` atomically (JPEG for .jpg/.jpeg, else by suffix, e.g.
    PNG).

    Raises:
        InputError: the image cannot be read.
    """
    # the page as displayed: the PAGE file's size and polygons refer to it
    overlay = draw_overlay(read_displayed_rgb(image_path), page, classes, line_classes)
    suffix = Path(out_path).suffix.lower()
    buffer = io.BytesIO()
    if suffix in (".jpg", ".jpeg"):
        overlay.save(buffer, format="JPEG", quality=quality)
    else:
        overlay.save(buffer, format=Image.registered_extensions().get(suffix, "PNG"))
    write_bytes_atomic(out_path, buffer.getvalue())
