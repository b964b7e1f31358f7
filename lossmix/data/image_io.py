"""Reading image files into the package's one pixel format: HxWx3 uint8 in **RGB** channel order.

Every image that enters lossmix goes through :func:`read_image`, so there is exactly one place where
OpenCV's BGR order is turned into RGB; augmentations, mixing and visualisation all assume RGB.

Pixels are returned as stored in the file: EXIF orientation is *not* applied (VOC-style annotations
describe the stored pixels, and the XML ``<size>`` is checked against them by ``tools/check_dataset.py``).
"""
from __future__ import annotations

import logging
import os
import struct

import cv2
import numpy as np

from .errors import BadSampleError

__all__ = ["read_image", "image_size", "jpeg_end"]

logger = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk type followed by its (constant) CRC
_TAIL_BYTES = 4096  # enough to see past ordinary zero padding without scanning the whole file


def _read_bytes(path) -> np.ndarray:
    """The file's bytes as a uint8 array (np.fromfile copes with non-ASCII paths, unlike cv2.imread)."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except FileNotFoundError:
        raise BadSampleError(path, "image file does not exist", kind="missing_file") from None
    except OSError as err:  # permissions, a directory, an I/O error
        raise BadSampleError(path, f"cannot read image file: {err.strerror or err}", kind="unreadable_file") from None
    if data.size == 0:
        raise BadSampleError(path, "image file is empty (0 bytes)", kind="empty_file")
    return data


def _tail_without_padding(data: np.ndarray) -> bytes:
    """The file's last bytes with trailing zero padding removed (some writers pad files to a block size)."""
    tail = data[-_TAIL_BYTES:].tobytes().rstrip(b"\0")
    if tail or data.size <= _TAIL_BYTES:
        return tail
    nonzero = np.flatnonzero(data)  # long padding: fall back to a full scan
    return data[max(0, nonzero[-1] + 1 - 16) : nonzero[-1] + 1].tobytes() if nonzero.size else b""


def jpeg_end(data: np.ndarray) -> int | None:
    """Offset just past the EOI marker (FFD9) that ends the JPEG stream of ``data``, or None when the stream is
    cut short. Walks the marker segments (so an EXIF thumbnail's own FFD9 is skipped by its segment's length)
    and, after each start of scan, the entropy-coded data to the next marker (FF followed by a byte other than
    00, FF or a restart marker D0-D7)."""
    n = int(data.size)
    ff = np.flatnonzero(data[:-1] == 0xFF)
    follow = data[ff + 1]
    markers = ff[(follow != 0x00) & (follow != 0xFF) & ((follow < 0xD0) | (follow > 0xD7))]
    pos = 2
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return None
        marker = int(data[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return pos + 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        if pos + 4 > n:
            return None
        end = pos + 2 + (int(data[pos + 2]) << 8 | int(data[pos + 3]))
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            i = int(np.searchsorted(markers, end))
            if i == len(markers):
                return None
            pos = int(markers[i])
        else:
            pos = end
    return None


def _check_complete(path, data: np.ndarray) -> None:
    """Reject truncated JPEG / PNG files, which OpenCV may decode partially with only a warning.

    A JPEG is complete when its stream reaches the EOI marker (:func:`jpeg_end`); bytes after it, such as a
    phone's "motion photo" video trailer, are ignored (logged at debug level). A PNG must end with IEND
    (zero padding after it is allowed).
    """
    head = data[:8].tobytes()
    if head.startswith(_JPEG_MAGIC):
        end = jpeg_end(data)
        if end is None:
            raise BadSampleError(path, "truncated JPEG: the image data stops before the end marker (FFD9)",
                                 kind="corrupt_image")
        if end < data.size and data[end:].any():
            logger.debug("%s: %d bytes after the JPEG end marker ignored (e.g. a motion-photo trailer)",
                         path, data.size - end)
    elif head == _PNG_MAGIC:
        if not _tail_without_padding(data).endswith(_PNG_IEND):
            raise BadSampleError(path, "truncated PNG: the file does not end with an IEND chunk", kind="corrupt_image")


def read_image(path, conversions: list | None = None) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` ``uint8`` array in RGB order.

    Conversions applied (each appended to ``conversions`` when a list is given):
    ``"grayscale->rgb"`` (the one channel replicated), ``"rgba->rgb"`` (alpha dropped, no compositing),
    ``"gray+alpha->rgb"``, ``"uint16->uint8"`` (divided by 257 and rounded, so 65535 -> 255).

    Raises :class:`BadSampleError` naming the file, with ``kind`` one of ``"missing_file"``,
    ``"unreadable_file"``, ``"empty_file"``, ``"corrupt_image"`` (undecodable or truncated) or
    ``"unsupported_image"`` (a pixel type other than 8 / 16-bit unsigned, e.g. float EXR).
    """
    data = _read_bytes(path)
    _check_complete(path, data)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise BadSampleError(path, f"cannot decode image: {err}", kind="corrupt_image") from None
    if image is None or image.size == 0:
        raise BadSampleError(path, "cannot decode image (not an image, or an unsupported or corrupt format)",
                             kind="corrupt_image")
    done = [] if conversions is None else conversions

    if image.dtype == np.uint16:
        # Round to nearest: 257 * k maps back to exactly k.
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
        done.append("uint16->uint8")
    elif image.dtype != np.uint8:
        raise BadSampleError(path, f"unsupported pixel type {image.dtype} (expected 8 or 16-bit unsigned)",
                             kind="unsupported_image")

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        done.append("grayscale->rgb")
    elif image.ndim == 3 and image.shape[2] == 2:
        image = cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
        done.append("gray+alpha->rgb")
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
        done.append("rgba->rgb")
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    else:
        raise BadSampleError(path, f"unsupported image layout {image.shape}", kind="unsupported_image")
    return image


def _png_size(data: bytes):
    # The IHDR chunk comes first: width and height as big-endian uint32 at bytes 16..24.
    if len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    return None


def _jpeg_size(data: bytes):
    # Walk the marker segments to the first start-of-frame (SOF0..SOF15 less DHT/JPG/DAC).
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return height, width
        if marker in (0xD9, 0xDA) or length < 2:  # end of image / start of scan before a frame header
            return None
        pos += 2 + length
    return None


def image_size(path) -> tuple[int, int]:
    """``(height, width)`` of an image file, read from the JPEG / PNG header when possible.

    Cheap, but it does not validate the pixel data; other formats (or odd headers) are fully decoded.
    Raises :class:`BadSampleError` like :func:`read_image`.
    """
    try:
        with open(os.fspath(path), "rb") as f:
            head = f.read(64 * 1024)
    except FileNotFoundError:
        raise BadSampleError(path, "image file does not exist", kind="missing_file") from None
    except OSError as err:
        raise BadSampleError(path, f"cannot read image file: {err.strerror or err}", kind="unreadable_file") from None
    if not head:
        raise BadSampleError(path, "image file is empty (0 bytes)", kind="empty_file")
    size = None
    if head.startswith(_PNG_MAGIC):
        size = _png_size(head)
    elif head.startswith(_JPEG_MAGIC):
        size = _jpeg_size(head)
    if size is None or min(size) <= 0:
        h, w = read_image(path).shape[:2]
        return int(h), int(w)
    return int(size[0]), int(size[1])
