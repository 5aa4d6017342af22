"""Kling v3 Omni storyboards on GMI Cloud: up to six shots in one paid job, with where each shot lies as an output,
and Select Shot to take one shot's frames and sound from it."""
from __future__ import annotations

import asyncio

from comfy_api.latest import io

from ..gmi.errors import InputError
from ..gmi.images import pixel_ref, still_image, to_uint8
from ..gmi.jobs import job_key
from ..gmi.media import DecodeOptions
from ..gmi.models import KLING_V3_OMNI, check_take, check_timeout_minutes
from ..gmi.storyboard import select, spans
from . import outputs
from .text_to_video import check_constants

SPEC = KLING_V3_OMNI
Shots = io.Custom("GMI_SHOTS")  # {"fps", "frame_count", "shots": [{index, prompt, first_frame, frame_count, start, end}]}
EXAMPLE = ("2 | A red fox wakes in its den, morning light through the roots\n"
           "3 | The fox steps out into fresh snow and sniffs the air\n"
           "2 | Close-up: the fox turns its head toward the camera")


REFERENCES = 7  # Kling's limit of reference stills without a reference video


def _payload(storyboard, mode, aspect_ratio, sound, references=()) -> dict:
    return SPEC.build_payload({"storyboard": storyboard, "mode": mode, "aspect_ratio": aspect_ratio, "sound": sound,
                               "reference_images": list(references)})


def _references(images: dict) -> list:
    """image_1 … image_7 in order; a gap would renumber the later ones under the prompts' <<<image_N>>>."""
    given = [images.get(f"image_{n}") for n in range(1, REFERENCES + 1)]
    last = max((n for n, image in enumerate(given, 1) if image is not None), default=0)
    gap = next((n for n in range(1, last) if given[n - 1] is None), None)
    if gap is not None:
        raise InputError(f"image_{gap}: is not connected but image_{last} is; connect them from image_1 on, as the "
                         "prompts name them <<<image_1>>>, <<<image_2>>>, …")
    return given[:last]


class GMIKlingV3OmniStoryboard(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GMIKlingV3OmniStoryboard",
            display_name="Kling v3 Omni Storyboard (GMI Cloud)",
            category="GMI Cloud/Video",
            description="Kling 3.0 Omni multi-shot video on GMI Cloud: up to 6 shots, each with its own prompt and "
                        "seconds, one subject and one soundtrack, in one paid job. The 'shots' output says where "
                        "each shot lies; Select Shot takes one out.",
            **outputs.search_aliases("kling", "kling 3", "kling omni", "storyboard", "multi shot", "gmi", "gmi cloud"),
            inputs=[
                io.String.Input("storyboard", multiline=True, default=EXAMPLE,
                                tooltip="One shot per line: 'seconds | prompt' (1-6 shots, each at most 512 "
                                        "characters and at least 1 s; 3-15 s in all). Lines starting with # are "
                                        "notes."),
                io.Combo.Input("mode", options=["std", "pro"], default="std",
                               tooltip="std: 720p. pro: 1080p (costs more)."),
                io.Combo.Input("aspect_ratio", options=["16:9", "9:16", "1:1"], default="16:9"),
                io.Boolean.Input("sound", default=False, label_on="on", label_off="off",
                                 tooltip="One synchronized soundtrack over all shots (costs more)."),
                io.Int.Input("take", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Same take of the same storyboard = the same paid video, reused."),
                *outputs.job_inputs(),
                *[io.Image.Input(f"image_{n}", optional=True,
                                 tooltip=f"Reference image {n}: name it in any shot's prompt as <<<image_{n}>>> "
                                         "(a subject, a scene, a style).") for n in range(1, REFERENCES + 1)],
            ],
            outputs=[*outputs.schema_outputs(),
                     Shots.Output("shots", display_name="shots",
                                  tooltip="Where each shot lies in 'frames': index, prompt, first frame, frame count, "
                                          "start and end in seconds. Feed it to Select Shot.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, storyboard=None, mode=None, aspect_ratio=None, sound=None, take=None,
                        timeout_minutes=None, **_) -> bool | str:
        return check_constants(SPEC, multi_prompt=storyboard, mode=mode, aspect_ratio=aspect_ratio, sound=sound,
                               take=take, timeout_minutes=timeout_minutes)

    @classmethod
    def fingerprint_inputs(cls, storyboard=None, mode=None, aspect_ratio=None, sound=None, take=None,
                           rehearse=False, **images):
        try:
            refs = [pixel_ref(to_uint8(i.cpu().numpy())) for i in _references(images)]
            key = job_key(SPEC.model_id, _payload(storyboard, mode, aspect_ratio, sound, refs), check_take(take),
                          bool(rehearse))
        except (InputError, AttributeError):
            key = None  # an image linked but not computed yet: ComfyUI's own signature decides
        return outputs.fingerprint(key)

    @classmethod
    async def execute(cls, storyboard: str, mode: str, aspect_ratio: str, sound: bool, take: int,
                      timeout_minutes: int = 30, max_frames: int = 0, every_nth: int = 1, max_side: int = 0,
                      rehearse: bool = False, **images) -> io.NodeOutput:
        given = _references(images)
        stills = await asyncio.to_thread(
            lambda: [still_image(image.cpu().numpy(), f"image_{n}") for n, image in enumerate(given, 1)])
        payload, take = _payload(storyboard, mode, aspect_ratio, sound, stills), check_take(take)
        timeout_s = check_timeout_minutes(timeout_minutes) * 60
        options = DecodeOptions(max_frames=max_frames, every_nth=every_nth, max_side=max_side)
        rehearse = bool(rehearse)

        def shots(frame_count: int, fps: float) -> tuple:
            # Over the frames as decoded (every_nth and max_frames applied), so Select Shot cuts 'frames' right.
            return ({"fps": fps, "frame_count": frame_count,
                     "shots": spans(payload["multi_prompt"], frame_count, fps)},)

        return await outputs.run_and_output(
            cls, job_key(SPEC.model_id, payload, take, rehearse), options,
            lambda runner: runner.run(SPEC, payload, take, timeout_s=timeout_s, rehearse=rehearse, images=stills),
            rehearsal_label=f"take {take}" if rehearse else None, more=shots)


class GMISelectShot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GMISelectShot",
            display_name="Select Shot (GMI Cloud)",
            category="GMI Cloud/Video",
            description="One shot of a storyboard video: its frames, its span of the soundtrack and the frame rate, "
                        "so it can be upscaled, graded or re-timed alone.",
            **outputs.search_aliases("select shot", "storyboard", "shot", "gmi"),
            inputs=[io.Image.Input("frames"), io.Audio.Input("audio"), Shots.Input("shots"),
                    io.Int.Input("index", default=1, min=1, max=6, tooltip="Which shot, from 1.")],
            outputs=[io.Image.Output("shot_frames", display_name="frames"),
                     io.Audio.Output("shot_audio", display_name="audio"),
                     io.Float.Output("shot_fps", display_name="fps")],
        )

    @classmethod
    async def execute(cls, frames, audio, shots: dict, index: int = 1) -> io.NodeOutput:
        picked, span = select(shots, index, int(frames.shape[0]), audio["sample_rate"])
        return io.NodeOutput(frames[picked], {"waveform": audio["waveform"][..., span],
                                              "sample_rate": audio["sample_rate"]}, float(shots["fps"]))
