"""Readable comparison pictures: columns with titles, white separators, and each row's frame number.

Used for recon's ``compare.png``, the training validation images and ``tools/compare_frames.py``.
Text is drawn with PIL's default font, so nothing has to be installed or downloaded. Pictures are
uint8 RGB ``(H, W, 3)``, the file-edge layout of :mod:`cascadev.frames`; :func:`save_image` writes one
as PNG, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import atomic_output, check_output_path
from .errors import CascadeVError

SEPARATOR = 4  # white pixels between columns and between rows
TITLE_HEIGHT = 16  # the title bar above the columns, and the label strip above each row
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def tile_origin(row: int, column: int, height: int, width: int) -> tuple[int, int]:
    """(top, left) pixel of tile (``row``, ``column``) in a contact sheet of ``height`` x ``width`` tiles."""
    return TITLE_HEIGHT + row * (TITLE_HEIGHT + height + SEPARATOR) + TITLE_HEIGHT, column * (width + SEPARATOR)


def sheet_size(rows: int, columns: int, height: int, width: int) -> tuple[int, int]:
    """(height, width) of a contact sheet of ``rows`` x ``columns`` tiles of ``height`` x ``width``."""
    return TITLE_HEIGHT + rows * (TITLE_HEIGHT + height + SEPARATOR), columns * (width + SEPARATOR) - SEPARATOR


def contact_sheet(rows: Sequence[np.ndarray], titles: Sequence[str], frame_numbers: Sequence[int | str]) -> np.ndarray:
    """Rows of equal-width columns (each uint8 ``(H, len(titles) * W, 3)``) -> one labelled uint8 picture.

    The picture starts with a bar naming the columns; every row gets a strip above it saying
    ``frame N`` (``frame_numbers``, one per row); columns and rows are separated by white lines.
    """
    from PIL import Image, ImageDraw

    if len(rows) != len(frame_numbers):
        raise ValueError(f"contact_sheet got {len(rows)} rows but {len(frame_numbers)} frame numbers")
    height, total_width = rows[0].shape[:2]
    columns = len(titles)
    width = total_width // columns
    if width * columns != total_width:
        raise ValueError(f"a row of width {total_width} does not split into {columns} equal columns")
    sheet_height, sheet_width = sheet_size(len(rows), columns, height, width)
    sheet = Image.new("RGB", (sheet_width, sheet_height), WHITE)
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * (width + SEPARATOR) + 2, 2), title, fill=BLACK)
    for r, (row, number) in enumerate(zip(rows, frame_numbers)):
        top, _ = tile_origin(r, 0, height, width)
        draw.text((2, top - TITLE_HEIGHT + 2), f"frame {number}", fill=BLACK)
        for c in range(columns):
            tile = np.ascontiguousarray(row[:, c * width : (c + 1) * width])
            sheet.paste(Image.fromarray(tile), tile_origin(r, c, height, width)[::-1])
    return np.asarray(sheet)


def check_png_name(path: str | os.PathLike[str]) -> Path:
    """``path`` if its name ends in .png: pictures are written as PNG, which another suffix would misname."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CascadeVError(f"The picture {path} is written as PNG: give it a name that ends in .png.")
    return path


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Save a uint8 RGB image ``(H, W, 3)`` as PNG, atomically (temporary file, then rename)."""
    from PIL import Image

    path = check_png_name(path)
    check_output_path(path, "output image")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise CascadeVError(f"The image for {path} must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}.")
    with atomic_output(path, "output image") as tmp:
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")


def side_by_side(*videos: np.ndarray) -> np.ndarray:
    """Concatenate videos left to right: each uint8 ``(n, H, W_i, 3)`` -> ``(n, H, sum W_i, 3)``."""
    if not videos:
        raise ValueError("side_by_side needs at least one video")
    arrays = [np.asarray(v) for v in videos]
    first = arrays[0]
    for v in arrays:
        if v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"side_by_side needs (n, H, W, 3) videos, got shape {v.shape}")
        if v.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"side_by_side needs equal frame counts and heights, got {first.shape[:2]} and {v.shape[:2]}"
            )
    return np.concatenate(arrays, axis=2)
