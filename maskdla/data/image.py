"""The page as displayed: EXIF orientation of image files, 8-bit RGB pixels, one page a file.

A scanner or camera may store the pixels sideways and record in EXIF tag 0x0112 how to
show them. Annotations (PAGE, ALTO) and predictions refer to the page as displayed, so
every reader of image sizes goes through :func:`displayed_size`, and every reader of
pixels through :func:`to_rgb` (16-bit and float greyscale scaled to 8 bits; PIL's own
conversion clips them to a white or black page) and :func:`tiff_pages` (a multi-page
TIFF is refused, not read as its first page).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from maskdla.errors import InputError

__all__ = ["EXIF_ORIENTATION", "EXIF_TRANSPOSE", "SWAPS_SIDES", "orientation_transpose",
           "displayed_size", "to_rgb", "read_displayed_rgb", "tiff_pages",
           "check_one_page"]

PathLike = Union[str, "os.PathLike[str]"]

#: the EXIF tag of the orientation
EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                  4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                  6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                  8: Image.Transpose.ROTATE_90}
#: the transposes that swap width and height (orientations 5-8)
SWAPS_SIDES = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270,
               Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90)
#: PIL modes of greyscale with more than 8 bits a pixel (16-bit PNG and TIFF open as
#: I;16, older Pillows open 16-bit PNG as I): ``convert("RGB")`` clips them at 255
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: full scales of 32-bit float greyscale (PIL mode F, e.g. a float TIFF): the smallest that
#: holds the page's brightest sample is the page's: 1 (the float convention), 255 or 65535
#: (8- or 16-bit values stored as floats); ``convert("RGB")`` clips at 255 (a [0, 1] page
#: turns black, a 16-bit one white)
FLOAT_FULL_SCALES = (1.0, 255.0, 65535.0)
#: the TIFF tag NewSubfileType; its bits 0 (a reduced-resolution copy, e.g. a scanner's
#: thumbnail) and 2 (a transparency mask) mark frames that are not pages of their own
TIFF_SUBFILE_TYPE, TIFF_NOT_A_PAGE = 254, 0b101


def orientation_transpose(image: Image.Image) -> Optional[Image.Transpose]:
    """The transpose that shows an opened image upright, None when it is stored upright."""
    return EXIF_TRANSPOSE.get(image.getexif().get(EXIF_ORIENTATION, 1))


def displayed_size(image: Union[PathLike, Image.Image]) -> Tuple[int, int]:
    """(width, height) of an image file (or opened image) as displayed, EXIF orientation
    applied; a file's header only is read.

    Raises:
        InputError: a missing file or one whose header cannot be read.
    """
    if isinstance(image, Image.Image):
        swapped = orientation_transpose(image) in SWAPS_SIDES
        return image.size[::-1] if swapped else image.size
    path = Path(image)
    try:
        with Image.open(path) as opened:
            return displayed_size(opened)
    except FileNotFoundError:
        raise InputError("image file not found", path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"cannot read the image header ({error})", path) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """An opened image as 8-bit RGB (decodes it).

    Greyscale of 16 bits (and mode ``I``, which holds 16-bit samples when read from a PNG
    or TIFF) keeps its high byte, the scale PIL itself uses for 16-bit RGB; PIL's
    ``convert("RGB")`` would clip every sample above 255, and a scan's paper is far above.
    Float greyscale (mode ``F``) is scaled from its full scale (:data:`FLOAT_FULL_SCALES`)
    to 8 bits; NaN counts as black.
    """
    if image.mode in WIDE_GREY_MODES:
        samples = np.asarray(image)
        if samples.dtype.kind != "u":  # mode I, int32: a scan's samples are 16-bit ones
            samples = np.clip(samples, 0, 65535)
        image = Image.fromarray((samples >> 8).astype(np.uint8))  # mode L
    elif image.mode == "F":
        image = Image.fromarray(_float_to_8_bits(np.asarray(image)))  # mode L
    if image.mode != "RGB":
        return image.convert("RGB")
    image.load()  # decoded here: the file may be closed after
    return image


def _float_to_8_bits(samples: np.ndarray) -> np.ndarray:
    """Float samples -> uint8, 0 to the full scale of :data:`FLOAT_FULL_SCALES` that holds
    the brightest finite sample (with a 0.1 % margin for rounding), else to that sample."""
    finite = samples[np.isfinite(samples)]
    brightest = float(finite.max()) if finite.size else 0.0
    scale = next((full for full in FLOAT_FULL_SCALES if brightest <= full * 1.001), brightest)
    samples = np.nan_to_num(samples, nan=0.0, posinf=scale, neginf=0.0)
    return np.clip(samples * (255.0 / scale) + 0.5, 0, 255).astype(np.uint8)


def tiff_pages(image: Image.Image) -> int:
    """How many pages an opened TIFF holds (1 for other formats): its frames, less those
    its NewSubfileType tag marks as a reduced-resolution copy or a mask. Reads the frames'
    headers only and leaves the image at its first frame."""
    if image.format != "TIFF" or getattr(image, "n_frames", 1) < 2:
        return 1
    pages = 0
    try:
        for frame in range(image.n_frames):
            image.seek(frame)
            if not int(image.tag_v2.get(TIFF_SUBFILE_TYPE, 0) or 0) & TIFF_NOT_A_PAGE:
                pages += 1
    finally:
        image.seek(0)
    return max(pages, 1)


def check_one_page(image: Image.Image, path: PathLike) -> None:
    """InputError for a multi-page TIFF: its pages would need one PAGE file each, and
    reading its first page only would lose the others without a word."""
    pages = tiff_pages(image)
    if pages > 1:
        raise InputError(f"a multi-page TIFF ({pages} pages); maskdla reads one page per "
                         "image file: split it into one file per page (e.g. tiffsplit)", path)


def read_displayed_rgb(path: PathLike) -> Image.Image:
    """An image file as displayed (EXIF orientation applied), 8-bit RGB (:func:`to_rgb`):
    the page that annotations and predictions refer to, as overlays draw over it.

    Raises:
        InputError: a missing file or one that cannot be decoded.
    """
    try:
        with Image.open(path) as opened:
            transpose = orientation_transpose(opened)
            image = to_rgb(opened)
            if transpose is not None:
                image = image.transpose(transpose)
    except FileNotFoundError:
        raise InputError("image file not found", path) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"cannot read the image ({error})", path) from None
    return image
