"""Region queries: search with a box of the query image (the object a user selected), not all of it.

A box is `(x0, y0, x1, y1)` in pixels of the query image as a viewer shows it (EXIF orientation
applied), x0/y0 inclusive, x1/y1 exclusive, like Pillow's `crop`. The CLI takes it as
`--box X0,Y0,X1,Y1`, the API as `"box": [x0, y0, x1, y1]` (or the same text in a form field).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

from .errors import ImageFinderError

Box = tuple[float, float, float, float]
MIN_BOX_SIDE = 8  # px: a smaller region has too little content to describe (the backbone's stride is 32)


class BoxError(ImageFinderError, ValueError):
    """A query box that is malformed or does not fit the query image; the message says which and why."""


def parse_box(value: str | Sequence[float]) -> Box:
    """'X0,Y0,X1,Y1' (or four numbers) -> a box; BoxError says what is wrong with it."""
    parts: Sequence[str | float] = value.replace(" ", "").split(",") if isinstance(value, str) else value
    if len(parts) != 4:
        raise BoxError(f"box {_show(value)}: needs four numbers X0,Y0,X1,Y1 (pixels of the query image)")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise BoxError(f"box {_show(value)}: X0,Y0,X1,Y1 must be numbers (pixels of the query image)") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise BoxError(f"box {_show(value)}: X0,Y0,X1,Y1 must be finite numbers")
    if x1 <= x0 or y1 <= y0:
        raise BoxError(f"box {_show(value)}: needs X0 < X1 and Y0 < Y1 (left, top, right, bottom)")
    return x0, y0, x1, y1


def crop_box(image: Image.Image, box: Box, size: tuple[int, int] | None = None) -> Image.Image:
    """The region `box` of `image`. `size`: the (width, height) the box's pixels refer to, when the
    image was decoded smaller than that (JPEG draft); default the image's own size."""
    width, height = size or image.size
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise BoxError(f"box {_show(box)} does not fit in the {width}x{height} query image "
                       f"(0 <= X0 < X1 <= {width}, 0 <= Y0 < Y1 <= {height})")
    if min(x1 - x0, y1 - y0) < MIN_BOX_SIDE:
        raise BoxError(f"box {_show(box)} is too small: each side needs at least {MIN_BOX_SIDE} px")
    sx, sy = image.width / width, image.height / height
    return image.crop((round(x0 * sx), round(y0 * sy), max(round(x0 * sx) + 1, round(x1 * sx)),
                       max(round(y0 * sy) + 1, round(y1 * sy))))


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    try:
        return ",".join(f"{float(v):g}" for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return repr(value)
