"""Kling v3 text to video, on GMI Cloud."""
from __future__ import annotations

from comfy_api.latest import io

from ..gmi.errors import GMIError
from ..gmi.jobs import job_key
from ..gmi.media import DecodeOptions
from ..gmi.models import KLING_V3_T2V, check_take, check_timeout_minutes
from . import outputs


def _payload_and_take(prompt, negative_prompt, duration, aspect_ratio, sound, take):
    payload = KLING_V3_T2V.build_payload({"prompt": prompt, "negative_prompt": negative_prompt, "duration": duration,
                                          "aspect_ratio": aspect_ratio, "sound": sound})
    return payload, check_take(take)


def common_inputs(aspect: bool = True) -> list:
    """The inputs the Kling v3 nodes share, in their saved-workflow order (aspect only where the model takes one)."""
    return [
        io.String.Input("prompt", multiline=True, default="",
                        tooltip="What happens in the video: scene, subject, action, camera. 1-2500 characters."),
        io.String.Input("negative_prompt", multiline=True, default="", tooltip="What to avoid. Leave empty for none."),
        io.Int.Input("duration", default=5, min=3, max=15, step=1,
                     tooltip="Length of the video in seconds (3-15). The price is per second."),
        *([io.Combo.Input("aspect_ratio", options=list(KLING_V3_T2V.param("aspect_ratio").options), default="16:9",
                          tooltip="16:9 landscape (1280x720), 9:16 vertical, 1:1 square.")] if aspect else []),
        io.Boolean.Input("sound", default=True, label_on="on", label_off="off",
                         tooltip="Generate a synchronized soundtrack (costs more)."),
        io.Int.Input("take", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                     tooltip="Same take of the same inputs = the same paid video, reused. Another take = a new paid "
                             "generation. Keep the control on 'fixed' to avoid paying on every queue."),
    ]


def check_constants(spec, take=None, timeout_minutes=None, **values) -> bool | str:
    """validate_inputs for a Kling node: each constant input checked (linked ones arrive as None; execute checks
    them again with their real values)."""
    checks = [(value, spec.param(name).check) for name, value in values.items()]
    checks += [(take, check_take), (timeout_minutes, check_timeout_minutes)]
    for value, check in checks:
        if value is None:
            continue
        try:
            check(value)
        except GMIError as exc:
            return str(exc)
    return True


class GMIKlingV3TextToVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GMIKlingV3TextToVideo",
            display_name="Kling v3 Text to Video (GMI Cloud)",
            category="GMI Cloud/Video",
            description="Kling 3.0 (v3) text to video on GMI Cloud: a prompt becomes an MP4, IMAGE frames and AUDIO, "
                        "billed per second of video to your GMI account. The same inputs and take never pay twice: "
                        "the saved video is reused, or a running job re-attached.",
            **outputs.search_aliases("kling", "kling 3", "kling 3.0", "kling v3", "gmi", "gmi cloud", "text to video",
                                     "t2v", "video generation"),
            inputs=[
                *common_inputs(),
                *outputs.job_inputs(),
            ],
            outputs=outputs.schema_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, prompt=None, negative_prompt=None, duration=None, aspect_ratio=None, sound=None,
                        take=None, timeout_minutes=None, **_) -> bool | str:
        return check_constants(KLING_V3_T2V, duration=duration, aspect_ratio=aspect_ratio, sound=sound, prompt=prompt,
                               negative_prompt=negative_prompt, take=take, timeout_minutes=timeout_minutes)

    @classmethod
    def fingerprint_inputs(cls, prompt=None, negative_prompt=None, duration=None, aspect_ratio=None, sound=None,
                           take=None, timeout_minutes=None, rehearse=False, **_):
        try:
            key = job_key(KLING_V3_T2V.model_id,
                          *_payload_and_take(prompt, negative_prompt, duration, aspect_ratio, sound, take),
                          bool(rehearse))
        except GMIError:
            key = None
        return outputs.fingerprint(key)

    @classmethod
    async def execute(cls, prompt: str, negative_prompt: str, duration: int, aspect_ratio: str, sound: bool, take: int,
                      timeout_minutes: int = 30, max_frames: int = 0, every_nth: int = 1,
                      max_side: int = 0, rehearse: bool = False) -> io.NodeOutput:
        payload, take = _payload_and_take(prompt, negative_prompt, duration, aspect_ratio, sound, take)
        timeout_s = check_timeout_minutes(timeout_minutes) * 60
        options = DecodeOptions(max_frames=max_frames, every_nth=every_nth, max_side=max_side)
        rehearse = bool(rehearse)
        return await outputs.run_and_output(
            cls, job_key(KLING_V3_T2V.model_id, payload, take, rehearse), options,
            lambda runner: runner.run(KLING_V3_T2V, payload, take, timeout_s=timeout_s, rehearse=rehearse),
            rehearsal_label=f"take {take}" if rehearse else None)
