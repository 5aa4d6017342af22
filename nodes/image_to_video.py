"""Kling v3 image to video, on GMI Cloud: the text-to-video node's outputs from a first (and optional last) frame."""
from __future__ import annotations

import asyncio

from comfy_api.latest import io

from ..gmi.errors import GMIError
from ..gmi.images import pixel_ref, still_image, to_uint8
from ..gmi.jobs import job_key
from ..gmi.media import DecodeOptions
from ..gmi.models import KLING_V3_I2V, check_take, check_timeout_minutes
from . import outputs
from .text_to_video import check_constants, common_inputs

SPEC = KLING_V3_I2V


def _payload(prompt, negative_prompt, duration, sound, image, end_image) -> dict:
    return SPEC.build_payload({"prompt": prompt, "negative_prompt": negative_prompt, "duration": duration,
                               "sound": sound, "image": image, "end_image": end_image})


class GMIKlingV3ImageToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GMIKlingV3ImageToVideo",
            display_name="Kling v3 Image to Video (GMI Cloud)",
            category="GMI Cloud/Video",
            description="Kling 3.0 (v3) image to video on GMI Cloud: animates an IMAGE from the graph (the first image "
                        "of a batch), optionally easing into an end frame; billed per second of video to your GMI "
                        "account. The same pixels, inputs and take never pay twice.",
            **outputs.search_aliases("kling", "kling 3", "kling v3", "gmi", "gmi cloud", "image to video", "i2v",
                                     "first last frame", "animate image"),
            inputs=[
                io.Image.Input("image", tooltip="The first frame (the first image of a batch). At least 300 px on "
                                                "the short side, at most 2.5:1; the video takes the nearest of "
                                                "16:9, 9:16 or 1:1."),
                io.Image.Input("end_image", optional=True, tooltip="Optional last frame: the video eases into it."),
                *common_inputs(aspect=False),
                *outputs.job_inputs(),
            ],
            outputs=outputs.schema_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, prompt=None, negative_prompt=None, duration=None, sound=None, take=None,
                        timeout_minutes=None, **_) -> bool | str:
        return check_constants(SPEC, prompt=prompt, negative_prompt=negative_prompt, duration=duration, sound=sound,
                               take=take, timeout_minutes=timeout_minutes)

    @classmethod
    def fingerprint_inputs(cls, image=None, end_image=None, prompt=None, negative_prompt=None, duration=None,
                           sound=None, take=None, rehearse=False, **_):
        try:
            refs = [pixel_ref(to_uint8(i.cpu().numpy())) if i is not None else None for i in (image, end_image)]
            key = job_key(SPEC.model_id, _payload(prompt, negative_prompt, duration, sound, *refs),
                          check_take(take), bool(rehearse)) if image is not None else None
        except (GMIError, AttributeError):
            key = None
        return outputs.fingerprint(key)

    @classmethod
    async def execute(cls, image, prompt: str, negative_prompt: str, duration: int, sound: bool, take: int,
                      end_image=None, timeout_minutes: int = 30, max_frames: int = 0, every_nth: int = 1,
                      max_side: int = 0, rehearse: bool = False) -> io.NodeOutput:
        def encode():  # PNG of a large still takes a moment: off the event loop
            return [still_image(image.cpu().numpy(), "image")] + (
                [still_image(end_image.cpu().numpy(), "end_image")] if end_image is not None else [])

        images = await asyncio.to_thread(encode)
        payload = _payload(prompt, negative_prompt, duration, sound, images[0], images[1] if end_image is not None
                           else None)
        take = check_take(take)
        timeout_s = check_timeout_minutes(timeout_minutes) * 60
        options = DecodeOptions(max_frames=max_frames, every_nth=every_nth, max_side=max_side)
        rehearse = bool(rehearse)
        return await outputs.run_and_output(
            cls, job_key(SPEC.model_id, payload, take, rehearse), options,
            lambda runner: runner.run(SPEC, payload, take, timeout_s=timeout_s, rehearse=rehearse, images=images),
            rehearsal_label=f"take {take}" if rehearse else None)
