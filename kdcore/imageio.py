"""How an image file becomes a model input: the one definition used by training, the server and the client.

Training reads datasets with it (:mod:`training.data`), the exporter ships this file into the model
repository so the server-side decoder of encoded images (``<model>_decoder``) decodes exactly as training did,
and the scoring client (:mod:`client.scoring`) prepares raw-pixel requests with it. So this module imports only
numpy and OpenCV: no torch, nothing else from the project.

The rule: decode with OpenCV (any format it reads), 16-bit and float images scaled to 8 bits, grayscale
replicated to RGB, alpha dropped, then resized to the model's square input with ``cv2.INTER_AREA``
(aspect ratio not kept). Truncated files are errors, not silently grey-filled images.
"""

from __future__ import annotations

import cv2
import numpy as np

#: File suffixes the project treats as images (all readable by OpenCV).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Largest side accepted when decoding: a 40 000 px frame is a mistake, not a line-scan image.
MAX_SIDE = 32768

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
#: Bytes at the end searched for the end marker: some cameras pad or append a short trailer after it.
_TAIL = 1024


class ImageDecodeError(ValueError):
    """Bytes that are not a complete image OpenCV can decode; the message says why."""


def _truncation(data: bytes) -> str | None:
    """Why ``data`` looks cut short, for the formats whose decoders would otherwise fill the gap silently."""
    if data.startswith(_JPEG_SOI) and _JPEG_EOI not in data[-_TAIL:]:
        # libjpeg decodes a truncated JPEG with a warning and grey rows; the end-of-image marker is the check.
        return "truncated JPEG (no end-of-image marker)"
    if data.startswith(_PNG_SIGNATURE) and _PNG_IEND not in data[-_TAIL:]:
        return "truncated PNG (no IEND chunk)"
    return None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 16-bit and float images to uint8 (floats in [0, 1] are taken as fractions of full scale)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded array (gray, gray+1, BGR or BGRA, any depth) as contiguous RGB uint8 ``(H, W, 3)``."""
    image = to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageDecodeError(f"unsupported number of channels: {channels}")


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, BMP, TIFF, WebP, ...) to RGB uint8 ``(H, W, 3)``.

    Raises:
        ImageDecodeError: Empty, truncated, undecodable, too large or of an unsupported channel count.
    """
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buffer.size == 0:
        raise ImageDecodeError("empty file")
    reason = _truncation(buffer[:8].tobytes() + buffer[-_TAIL:].tobytes() if buffer.size > 8 + _TAIL else buffer.tobytes())
    if reason:
        raise ImageDecodeError(reason)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageDecodeError("not an image OpenCV can decode (corrupt or unsupported format)")
    if max(image.shape[:2]) > MAX_SIDE:
        raise ImageDecodeError(f"image of {image.shape[1]}x{image.shape[0]} px exceeds {MAX_SIDE} px per side")
    return np.ascontiguousarray(to_rgb(image))


def read_image(path) -> np.ndarray:
    """Read and decode an image file (see :func:`decode_image`); ``OSError`` if it cannot be read."""
    return decode_image(np.fromfile(path, dtype=np.uint8))  # np.fromfile: non-ASCII paths work too


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to the model's square input, ``(size, size, C)``, with the training resampling (INTER_AREA)."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))


def binary_mask(mask: np.ndarray | None, size: int | None) -> np.ndarray:
    """A ground-truth mask as uint8 ``{0, 1}`` at ``(size, size)`` (``size`` None: at the mask's own resolution).

    Pixels above half the mask's maximum are anomalous, so 0/255 and 0/1 masks both work; resizing is nearest
    neighbour so no pixel is half anomalous. ``None`` gives an all-zero mask (it needs a ``size``).
    """
    if mask is None:
        if size is None:
            raise ValueError("an absent mask needs a size")
        return np.zeros((size, size), dtype=np.uint8)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if size is not None and mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    peak = float(mask.max())
    if peak == 0:
        return np.zeros(mask.shape, dtype=np.uint8)
    return (mask.astype(np.float32) > 0.5 * peak).astype(np.uint8)
