"""Rehearsal pictures for a storyboard (Kling v3 Omni multi-shot): each shot on its own flat colour, so the cut is
plain to see and the mean colour of any frame tells its shot, cut exactly where ``storyboard.spans`` puts each
boundary (the frame at a boundary is the next shot's). The shot's number shows as that many white squares at the bottom
right; with the ffmpeg binary its label ("shot 2 of 3") and prompt are written on it too (``words_filter``)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np

from .rehearsal_stills import yuv420

# Six colours far apart in hue and brightness (Kling takes at most six shots), dark enough for white words to read.
SHOT_COLOURS = ((200, 60, 60), (60, 160, 70), (60, 90, 200), (210, 160, 40), (150, 70, 180), (40, 160, 170))
PROMPT_LINES = 6  # at most, of each shot's prompt: the words never cover so much that the colour is lost


def shot_pictures(width: int, height: int, fps: float, spans: list[dict]) -> Iterator[np.ndarray]:
    """yuv420p pictures (luma rows, then the two quarter-size chroma planes) for every frame of ``spans``: the shot's
    colour, its number in white squares (bottom right), a bar that sweeps across once a second from each cut, and a
    strip along the bottom that fills as the clip plays (so a rehearsal is never taken for the real thing). One
    buffer, reused."""
    picture = np.empty((height * 3 // 2, width), np.uint8)
    luma, chroma = picture[:height], picture[height:].reshape(2, height // 2, width // 2)
    frames = sum(span["frame_count"] for span in spans)
    bar, strip = max(2, width // 32), max(2, height // 40)
    pip = max(4, min(width, height) // 24) // 2 * 2  # even: the squares sit on whole chroma samples
    top = (height - strip) // 2 * 2 - 2 * pip  # the squares' row, a square's height above the strip
    for number, span in enumerate(spans):
        planes = np.rint(yuv420(np.full((2, 2, 3), SHOT_COLOURS[number % len(SHOT_COLOURS)], np.uint8)))
        y, u, v = planes[0, 0], planes[2, 0], planes[2, 1]  # a 2 x 2 picture: luma rows, then one u and one v
        for index in range(span["first_frame"], span["first_frame"] + span["frame_count"]):
            luma[:] = y
            chroma[0], chroma[1] = u, v
            for square in range(number + 1):  # shot 3: three squares, right to left
                right = width - pip * (2 * square + 1)
                luma[top:top + pip, right - pip:right] = 235
                chroma[:, top // 2:(top + pip) // 2, (right - pip) // 2:right // 2] = 128
            left = round((index - span["first_frame"]) / fps % 1 * (width - bar))
            luma[:, left:left + bar] = 235
            luma[height - strip:, :round(width * (index + 1) / frames)] = 235
            yield picture


def shot_cards(spans: list[dict], label: str, width: int, height: int) -> list[tuple[int, int, str]]:
    """(first frame, last frame, words) of each shot: "REHEARSAL - take 0 - shot 2 of 3", then its prompt wrapped to
    the frame's width (at most PROMPT_LINES lines)."""
    size = font_size(width, height)
    chars = max(16, int((width - 40) / (0.6 * size)))
    cards = []
    for number, span in enumerate(spans, 1):
        lines = textwrap.wrap(span["prompt"], chars, max_lines=PROMPT_LINES, placeholder=" ...")
        title = " - ".join(part for part in ("REHEARSAL", label, f"shot {number} of {len(spans)}") if part)
        words = "\n".join([title, *lines])
        cards.append((span["first_frame"], span["first_frame"] + span["frame_count"] - 1, words))
    return cards


def font_size(width: int, height: int) -> int:
    return max(14, min(width, height) // 30)


def words_filter(cards: list[tuple[int, int, str]], folder: Path, width: int, height: int) -> str:
    """ffmpeg's -vf for ``cards``: one drawtext per shot, on from its first frame to its last (by frame number, so
    exactly at the cut). The words go in files in ``folder``, named plainly: run ffmpeg there (no path to escape)."""
    filters = []
    for number, (first, last, words) in enumerate(cards, 1):
        (folder / f"shot{number}.txt").write_text(words, encoding="utf-8")
        filters.append(f"drawtext=textfile=shot{number}.txt:expansion=none:fontsize={font_size(width, height)}"
                       f":fontcolor=white:box=1:boxcolor=black@0.5:boxborderw=6:x=20:y=20:line_spacing=6"
                       f":enable='between(n,{first},{last})'")
    return ",".join(filters)
