"""GMI Cloud video nodes for ComfyUI. Importing this package is cheap and needs no ComfyUI: host modules load
only inside comfy_entrypoint()."""
from __future__ import annotations

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes import node_list

    class GMICloudExtension(ComfyExtension):
        async def get_node_list(self):
            return node_list()

    return GMICloudExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
