"""Still images that enter a payload (image to video's first and last frame): checked against Kling's limits, encoded
losslessly as PNG, and referred to in the journal by a digest of their pixels, never by megabytes of Base64.

A payload holds a reference ``image:<W>x<H>:<pixel sha256>``: the same pixels in any tensor are the same reference
(and so the same paid take), whatever the PNG encoder makes of them. The Base64 text goes only on the wire.
"""
from __future__ import annotations

import base64
import hashlib
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import InputError

# Kling's own limits for image to video (GMI's page states none of its own): JPG/PNG, at most 10 MB, width and height
# at least 300 px, aspect ratio between 1:2.5 and 2.5:1.
MIN_SIDE = 300
MAX_ASPECT = 2.5
MAX_BYTES = 10 * 1000 * 1000
REF = re.compile(r"^image:(\d+)x(\d+):([0-9a-f]{64})$")


@dataclass(frozen=True)
class StillImage:
    """One RGB image ready for a payload: its reference (for the journal and the job key) and its wire text."""

    width: int
    height: int
    ref: str
    base64: str

    @property
    def wire_sha256(self) -> str:
        """Digest of the exact text sent, to recognise it in GMI's echo of a payload without keeping it."""
        return hashlib.sha256(self.base64.encode("ascii")).hexdigest()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 from ComfyUI's float 0..1 (or already uint8); an alpha channel is dropped."""
    array = np.asarray(pixels)
    if array.ndim == 4:
        array = array[0]  # the first image of a batch
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"image: has the shape {tuple(np.shape(pixels))}, which is not an RGB picture; connect an "
                         "IMAGE output (e.g. Load Image).")
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(np.rint(np.asarray(array, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def check_size(width: int, height: int, what: str = "image") -> None:
    """Kling's size and shape limits, as one line that says what to do."""
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{what}: is {width}x{height}; resize it to at least {MIN_SIDE} px on the short side "
                         "(e.g. with Upscale Image By) and queue again.")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise InputError(f"{what}: is {width}x{height}, longer than Kling accepts (at most {MAX_ASPECT}:1 either way); "
                         "crop it closer to 16:9, 9:16 or 1:1 and queue again.")


def png_bytes(rgb: np.ndarray) -> bytes:
    """A lossless PNG of H x W x 3 uint8 pixels (8-bit RGB, one zlib stream)."""
    height, width, _ = rgb.shape
    rows = np.empty((height, 1 + width * 3), dtype=np.uint8)
    rows[:, 0] = 0  # filter: none on every row
    rows[:, 1:] = rgb.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def pixel_ref(rgb: np.ndarray) -> str:
    """The payload's reference to H x W x 3 uint8 pixels: their size and the digest of their values."""
    height, width, _ = rgb.shape
    digest = hashlib.sha256(struct.pack(">II", width, height) + rgb.tobytes()).hexdigest()
    return f"image:{width}x{height}:{digest}"


def still_image(pixels: np.ndarray, what: str = "image") -> StillImage:
    """The image checked against Kling's limits and encoded for the payload; one InputError line when it cannot be."""
    rgb = to_uint8(pixels)
    height, width, _ = rgb.shape
    check_size(width, height, what)
    png = png_bytes(rgb)
    if len(png) > MAX_BYTES:
        raise InputError(f"{what}: is {len(png) / 1e6:.1f} MB as a lossless PNG, over Kling's 10 MB; scale it down "
                         f"(e.g. to 2048 px on the long side) and queue again.")
    return StillImage(width, height, pixel_ref(rgb), base64.b64encode(png).decode("ascii"))


def ref_size(value: object) -> tuple[int, int] | None:
    """(width, height) of an image reference, or None when ``value`` is not one."""
    match = REF.match(value) if isinstance(value, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def wire_payload(payload: dict, images: dict[str, StillImage]) -> dict:
    """The payload GMI receives: each image reference, at any depth (Omni's image_list), replaced by its Base64."""
    def expand(value):
        if ref_size(value):
            if value not in images:
                raise InputError("The image of this take is needed to submit it again: queue it from the node (or the "
                                 "command line) with the image connected.")
            return images[value].base64
        if isinstance(value, list):
            return [expand(item) for item in value]
        if isinstance(value, dict):
            return {key: expand(item) for key, item in value.items()}
        return value

    return expand(payload)


def echo_matches(echoed: object, ours: object, images: dict[str, StillImage]) -> bool:
    """Whether a payload value GMI echoed is ours: plain values compare equal; an image compares by the digest of its
    Base64 text (its length first), never by holding two copies of megabytes side by side."""
    if isinstance(ours, list):
        return isinstance(echoed, list) and len(echoed) == len(ours) and all(
            echo_matches(e, o, images) for e, o in zip(echoed, ours))
    if isinstance(ours, dict):
        return isinstance(echoed, dict) and set(echoed) == set(ours) and all(
            echo_matches(echoed[k], v, images) for k, v in ours.items())
    if not ref_size(ours):
        return echoed == ours
    image = images.get(ours)
    if image is None or not isinstance(echoed, str) or len(echoed) != len(image.base64):
        return False
    return hashlib.sha256(echoed.encode("ascii", "replace")).hexdigest() == image.wire_sha256


def payload_matches(echoed: object, ours: dict, images: dict[str, StillImage]) -> bool:
    """Whether a payload GMI echoed is this take's (images compared by digest)."""
    return (isinstance(echoed, dict) and set(echoed) == set(ours)
            and all(echo_matches(echoed[key], value, images) for key, value in ours.items()))
