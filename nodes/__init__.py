"""ComfyUI face of the pack: V3 node classes. Loaded only by comfy_entrypoint(), inside ComfyUI."""
from __future__ import annotations


def node_list() -> list:
    from . import host
    from .collect import GMICollectVideo
    from .image_to_video import GMIKlingV3ImageToVideo
    from .storyboard import GMIKlingV3OmniStoryboard, GMISelectShot
    from .text_to_video import GMIKlingV3TextToVideo

    host.register_routes()
    host.warn_without_decoder()

    return [GMIKlingV3TextToVideo, GMIKlingV3ImageToVideo, GMIKlingV3OmniStoryboard, GMISelectShot, GMICollectVideo]
