"""The page as displayed: EXIF orientation of image files.

A scanner or camera may store the pixels sideways and record in EXIF tag 0x0112 how to
show them. Annotations (PAGE, ALTO) and predictions refer to the page as displayed, so
every reader of image sizes goes through :func:`displayed_size`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

from PIL import Image

from maskdla.errors import InputError

__all__ = ["EXIF_ORIENTATION", "EXIF_TRANSPOSE", "SWAPS_SIDES", "orientation_transpose",
           "displayed_size"]

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
