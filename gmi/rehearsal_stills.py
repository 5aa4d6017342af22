"""Rehearsal pictures for image to video: the first frame, easing into the end frame when one is given, at the size
the real job would give (the output aspect nearest the first image's; the still is centre-cropped to it)."""
from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .images import pixel_ref, to_uint8
from .media import read_image

STILL_KEYS = ("image", "image_tail")


def read_stills(payload: dict) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """The payload with each Base64 still replaced by its reference (so the catalogue's size rule applies), and the
    first and end pictures as H x W x 3 uint8 (None where absent, or where the payload holds only references)."""
    slim, pictures = dict(payload), {}
    for key in STILL_KEYS:
        text = payload.get(key)
        if not isinstance(text, str) or text.startswith("image:"):
            continue
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            continue
        with tempfile.TemporaryDirectory(prefix="gmi-still-") as folder:
            path = Path(folder) / "still"
            path.write_bytes(data)
            pictures[key] = to_uint8(read_image(path))
        slim[key] = pixel_ref(pictures[key])
    return slim, pictures.get("image"), pictures.get("image_tail")


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-cropped to width:height, then resampled (nearest) to width x height."""
    h, w, _ = rgb.shape
    if w * height > h * width:
        crop = round(h * width / height)
        rgb = rgb[:, (w - crop) // 2:(w - crop) // 2 + crop]
    else:
        crop = round(w * height / width)
        rgb = rgb[(h - crop) // 2:(h - crop) // 2 + crop]
    h, w, _ = rgb.shape
    rows = (np.arange(height) * h // height).clip(0, h - 1)
    cols = (np.arange(width) * w // width).clip(0, w - 1)
    return rgb[rows][:, cols]


def yuv420(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range yuv420p planes (luma rows, then the two quarter-size chroma planes), as float32."""
    r, g, b = (rgb[..., i].astype(np.float32) / 255.0 for i in range(3))
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    u = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    v = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    h, w = y.shape
    quarter = [p.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for p in (u, v)]
    return np.concatenate([y, np.stack(quarter).reshape(h // 2, w)])


def still_pictures(width: int, height: int, frames: int, first: np.ndarray,
                   end: np.ndarray | None) -> Iterator[np.ndarray]:
    """yuv420p pictures: the first frame, easing (smoothstep) into the end frame when given, with a strip along the
    bottom that fills as the clip plays (so a rehearsal is never taken for the real thing). One buffer, reused."""
    start = yuv420(_fit(first, width, height))
    finish = yuv420(_fit(end, width, height)) if end is not None else start
    picture = np.empty(start.shape, np.uint8)
    strip = max(2, height // 40)
    for index in range(frames):
        t = index / max(1, frames - 1)
        ease = t * t * (3 - 2 * t)
        picture[:] = np.rint(start + (finish - start) * ease)
        picture[height - strip:height, :round(width * (index + 1) / frames)] = 235
        yield picture
