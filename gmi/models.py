"""The model catalogue: each model's inputs, allowed values, defaults, validation and payload building.

A model is data (a ModelSpec); adding a sibling model is adding an entry, not code.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable

from . import storyboard
from .errors import InputError
from .images import StillImage, ref_size


@dataclass(frozen=True)
class Param:
    """One payload key: how the user's value is checked and how it is written on the wire."""

    name: str
    kind: str  # "text" | "int" | "enum" | "switch" | "image" (a StillImage, kept as its reference) | "storyboard"
    required: bool = False
    default: Any = None
    options: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    wire: str = "same"  # "same" | "str" (int sent as a string) | "on_off" (bool sent as "on"/"off")
    omit_empty: bool = False
    input_name: str = ""  # the node input and CLI name when it differs from the payload key (image_tail: end_image)

    @property
    def label(self) -> str:
        return self.input_name or self.name

    def check(self, value: Any) -> Any:
        """The wire value for ``value``; raises InputError naming this input and what is allowed."""
        if value is None:
            value = self.default
        if self.kind == "text":
            # NFC: the same visible text typed or pasted in another Unicode form is the same take.
            text = unicodedata.normalize("NFC", "" if value is None else str(value)).strip()
            bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
            if bad is not None:
                raise InputError(f"{self.name}: has an invalid character at position {bad + 1} (half of an emoji or "
                                 "symbol, lost in a copy); retype that part.")
            if self.required and not text:
                raise InputError(f"{self.name}: is empty; type a description of the video (1-{self.max} characters).")
            if self.max is not None and len(text) > self.max:
                raise InputError(f"{self.name}: is {len(text)} characters long; the limit is {self.max}. Shorten it.")
            return text
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise InputError(f"{self.name}: {value!r} is not a whole number; use {self.min}-{self.max}.")
            try:
                number = int(str(value).strip())
            except ValueError:
                raise InputError(f"{self.name}: {value!r} is not a whole number; use {self.min}-{self.max}.") from None
            if not (self.min <= number <= self.max):
                raise InputError(f"{self.name}: {number} is out of range; use {self.min}-{self.max}.")
            return str(number) if self.wire == "str" else number
        if self.kind == "enum":
            if value not in self.options:
                raise InputError(f"{self.name}: {value!r} is not allowed; use one of {', '.join(self.options)}.")
            return value
        if self.kind == "image_list":  # Omni's reference images: [{"image_url": <reference>}, ...]
            images = [v for v in (value or []) if v is not None]
            if self.max is not None and len(images) > self.max:
                raise InputError(f"{self.label}: {len(images)} images; at most {self.max}.")
            return [{"image_url": Param("image", "image", input_name=self.label).check(v)} for v in images]
        if self.kind == "storyboard":
            return storyboard.wire(storyboard.parse(value))
        if self.kind == "image":
            if value is None:
                if self.required:
                    raise InputError(f"{self.label}: is not connected; connect an IMAGE (e.g. Load Image) to it.")
                return None
            if isinstance(value, StillImage):
                return value.ref
            if ref_size(value):
                return value
            raise InputError(f"{self.label}: is not an image.")
        if self.kind == "switch":
            if isinstance(value, str) and value in ("on", "off"):
                value = value == "on"
            if not isinstance(value, bool):
                raise InputError(f"{self.name}: {value!r} is not on/off; use true or false.")
            return ("on" if value else "off") if self.wire == "on_off" else value
        raise AssertionError(f"unknown param kind {self.kind}")


@dataclass(frozen=True)
class Price:
    """What one take is expected to cost."""

    amount: float       # USD
    per_second: float
    seconds: int
    source: str         # where the rate came from

    def __str__(self) -> str:
        return f"${self.amount:.2f} ({self.seconds} s x ${self.per_second:.3f}/s, {self.source})"


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    title: str
    params: tuple[Param, ...]
    # Output frame size for each aspect ratio (what the model renders), for memory estimates and rehearsal.
    frame_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    fps: float = 24.0
    # USD per second of video, by sound on/off, used when GMI's /models/{id} gives no price.
    price_per_second: dict[bool, float] = field(default_factory=dict)
    price_source: str = ""
    # Seconds a job usually takes before this machine has history: base + per second of video.
    eta_base: float = 60.0
    eta_per_second: float = 12.0
    # Frame size factor by the payload's ``mode`` (Omni: std 720p, pro 1080p), and keys the payload derives from
    # the inputs (Omni: multi_shot, shot_type and the total duration of a storyboard).
    mode_scale: dict[str, float] = field(default_factory=dict)
    derive: Callable[[dict], None] | None = None

    def seconds(self, payload: dict) -> int:
        return int(payload.get("duration", 5))

    def frame_size(self, payload: dict) -> tuple[int, int]:
        """The delivered video's size: by aspect_ratio, or (no aspect input) the output aspect nearest to the first
        image's, which is how an image-to-video model frames its first frame."""
        if "aspect_ratio" in payload:
            scale = self.mode_scale.get(payload.get("mode"), 1.0)
            width, height = self.frame_sizes[payload["aspect_ratio"]]
            return round(width * scale), round(height * scale)
        size = next((ref_size(v) for v in payload.values() if ref_size(v)), None)
        if size is None:
            return self.frame_sizes[next(iter(self.frame_sizes))]
        ratio = math.log(size[0] / size[1])
        return min(self.frame_sizes.values(), key=lambda wh: abs(math.log(wh[0] / wh[1]) - ratio))

    def has_sound(self, payload: dict) -> bool:
        return payload.get("sound", "on") == "on"

    def timing_group(self, payload: dict) -> tuple:
        """Jobs alike in how long they take: same duration, same sound (and same mode, where there is one)."""
        return (self.seconds(payload), self.has_sound(payload)) + ((payload["mode"],) if "mode" in payload else ())

    def price_key(self, payload: dict):
        """The catalogue's price table is by sound, or by (mode, sound) where the model has modes."""
        return (payload["mode"], self.has_sound(payload)) if "mode" in payload else self.has_sound(payload)

    def default_eta(self, payload: dict) -> float:
        return self.eta_base + self.eta_per_second * self.seconds(payload)

    def estimate_price(self, payload: dict, gmi_per_second: float | None = None) -> Price:
        """Duration x rate; GMI's own per-second price when it gave one, else the catalogue's table."""
        seconds = self.seconds(payload)
        if gmi_per_second is not None:
            return Price(round(seconds * gmi_per_second, 4), gmi_per_second, seconds, "GMI's price")
        rate = self.price_per_second[self.price_key(payload)]
        return Price(round(seconds * rate, 4), rate, seconds, self.price_source)

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def build_payload(self, values: dict[str, Any]) -> dict[str, Any]:
        """The JSON payload GMI expects, from the user's values; refuses bad input before anything is paid."""
        values = {self._wire_key(k): v for k, v in values.items()}
        unknown = set(values) - {p.name for p in self.params}
        if unknown:
            raise InputError(f"{self.model_id}: unknown input(s) {', '.join(sorted(unknown))}.")
        payload: dict[str, Any] = {}
        for p in self.params:
            wire = p.check(values.get(p.name))
            if p.omit_empty and wire in ("", None, []):
                continue
            payload[p.name] = wire
        if self.derive is not None:
            self.derive(payload)
        return payload

    def _wire_key(self, name: str) -> str:
        return next((p.name for p in self.params if p.input_name == name), name)


KLING_V3_T2V = ModelSpec(
    model_id="kling-v3-text-to-video",
    title="Kling v3 Text to Video",
    params=(
        Param("prompt", "text", required=True, max=2500),
        Param("negative_prompt", "text", default="", max=2500, omit_empty=True),
        Param("duration", "int", default=5, min=3, max=15, wire="str"),
        Param("aspect_ratio", "enum", default="16:9", options=("16:9", "9:16", "1:1")),
        Param("sound", "switch", default=True, wire="on_off"),
    ),
    frame_sizes={"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)},
    fps=24.0,
    # GMI publishes no figure we could confirm; these are the reported rates (2026), higher with sound.
    price_per_second={False: 0.168, True: 0.252},
    price_source="estimate from reported rates",
)


def parse_gmi_price(info: dict | None) -> float | None:
    """USD per second of video from a GET /models/{id} answer, when it states one plainly; else None."""
    if not isinstance(info, dict):
        return None
    for block in (info.get("price_info"), info.get("pricing"), info):
        if not isinstance(block, dict):
            continue
        price, unit = block.get("price"), str(block.get("unit") or block.get("pricing_type") or "").lower()
        if isinstance(price, str):
            try:
                price = float(price.strip().lstrip("$"))
            except ValueError:
                continue
        if isinstance(price, (int, float)) and not isinstance(price, bool) and price > 0 and "sec" in unit:
            return float(price)
    return None

KLING_V3_I2V = ModelSpec(
    model_id="kling-v3-image-to-video",
    title="Kling v3 Image to Video",
    params=(
        Param("prompt", "text", required=True, max=2500),
        Param("image", "image", required=True),
        Param("image_tail", "image", omit_empty=True, input_name="end_image"),
        Param("negative_prompt", "text", default="", max=2500, omit_empty=True),
        Param("duration", "int", default=5, min=3, max=15, wire="str"),
        Param("sound", "switch", default=True, wire="on_off"),
    ),
    # No aspect input: the video takes the output aspect nearest to the first image's (assumed from Kling's own
    # behaviour; GMI documents no output size for this model).
    frame_sizes={"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)},
    fps=24.0,
    # GMI states no price for it that we could confirm: the text-to-video rates, reported for Kling v3 in 2026.
    price_per_second={False: 0.168, True: 0.252},
    price_source="estimate from reported rates",
)

def _storyboard_keys(payload: dict) -> None:
    payload.update(multi_shot=True, shot_type="customize",
                   duration=str(sum(int(shot["duration"]) for shot in payload["multi_prompt"])))
    given = len(payload.get("image_list", []))
    for shot in payload["multi_prompt"]:
        wanted = [int(n) for n in re.findall(r"<<<image_(\d+)>>>", shot["prompt"])]
        if any(not 1 <= n <= given for n in wanted):
            raise InputError(f"storyboard shot {shot['index']}: refers to <<<image_{max(wanted)}>>> but "
                             f"{given} reference image(s) are connected; connect it or change the prompt.")


KLING_V3_OMNI = ModelSpec(
    model_id="kling-v3-omni",
    title="Kling v3 Omni Storyboard",
    params=(
        Param("multi_prompt", "storyboard", required=True, input_name="storyboard"),
        Param("mode", "enum", default="std", options=("std", "pro")),
        Param("aspect_ratio", "enum", default="16:9", options=("16:9", "9:16", "1:1")),
        Param("sound", "switch", default=False, wire="on_off"),
        # Up to 7 reference stills, named in any shot's prompt as <<<image_1>>> … (Kling's limit without a video).
        Param("image_list", "image_list", max=7, omit_empty=True, input_name="reference_images"),
    ),
    frame_sizes={"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (720, 720)},
    mode_scale={"std": 1.0, "pro": 1.5},  # std 720p, pro 1080p (Kling's own API; GMI's page names the two modes)
    fps=24.0,
    # Unconfirmed placeholders: std as Kling v3 text to video, pro a third dearer. GMI's /models/{id} price wins.
    price_per_second={("std", False): 0.168, ("std", True): 0.252, ("pro", False): 0.224, ("pro", True): 0.336},
    price_source="placeholder estimate, unconfirmed",
    derive=_storyboard_keys,
)

CATALOGUE: dict[str, ModelSpec] = {spec.model_id: spec for spec in (KLING_V3_T2V, KLING_V3_I2V, KLING_V3_OMNI)}


def check_take(take: Any) -> int:
    """The take number (seed-like, never sent to GMI)."""
    if isinstance(take, bool) or not isinstance(take, int) or take < 0:
        raise InputError(f"take: {take!r} is not allowed; use a whole number 0 or more.")
    return take


def check_timeout_minutes(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (1 <= value <= 24 * 60):
        raise InputError(f"timeout_minutes: {value!r} is not allowed; use 1-1440 minutes.")
    return float(value)


REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{6,128}$")


def check_request_id(value: Any) -> str:
    """A request id typed or pasted by the user: letters, digits and . _ : - only (never '/', '?' or spaces)."""
    text = str(value or "").strip()
    if not REQUEST_ID.match(text) or ".." in text:
        raise InputError(f"request_id: {text[:40]!r} is not a GMI request id; paste the id from a request_id output, "
                         "an error message or GMI's console.")
    return text
