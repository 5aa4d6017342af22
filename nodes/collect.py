"""Collect a GMI video by its request id: the same outputs as the generating node, nothing submitted."""
from __future__ import annotations

from comfy_api.latest import io

from ..gmi.errors import InputError
from ..gmi.media import DecodeOptions
from ..gmi.models import check_request_id, check_timeout_minutes
from . import outputs

class GMICollectVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GMICollectVideo",
            display_name="Collect Video by Request ID (GMI Cloud)",
            category="GMI Cloud/Video",
            description="Fetches the video of an existing GMI request (from a request_id output, an error message or "
                        "GMI's console), waiting for it if it is still running. Submits nothing and costs nothing.",
            **outputs.search_aliases("gmi", "gmi cloud", "collect video", "request id", "kling"),
            inputs=[
                io.String.Input("request_id", default="", tooltip="The GMI request id to collect."),
                outputs.timeout_input(),
                *outputs.decode_inputs(),
            ],
            outputs=outputs.schema_outputs(request_id_output="collected_request_id"),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, request_id=None, timeout_minutes=None, **_) -> bool | str:
        try:
            if request_id is not None:
                check_request_id(request_id)
            if timeout_minutes is not None:
                check_timeout_minutes(timeout_minutes)
        except InputError as exc:
            return str(exc)
        return True

    @classmethod
    def fingerprint_inputs(cls, request_id=None, **_):
        try:
            return outputs.fingerprint(f"request:{check_request_id(request_id)}")
        except InputError:
            return outputs.fingerprint(None)

    @classmethod
    async def execute(cls, request_id: str, timeout_minutes: int = 30, max_frames: int = 0, every_nth: int = 1,
                      max_side: int = 0) -> io.NodeOutput:
        request_id = check_request_id(request_id)
        timeout_s = check_timeout_minutes(timeout_minutes) * 60
        options = DecodeOptions(max_frames=max_frames, every_nth=every_nth, max_side=max_side)
        return await outputs.run_and_output(cls, f"request:{request_id}", options,
                                            lambda runner: runner.collect(request_id, timeout_s=timeout_s))
