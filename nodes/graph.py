"""Reading ComfyUI's API-format graph (the hidden 'prompt' input). Pure data: no host imports."""
from __future__ import annotations


def linked_outputs(prompt: dict | None, unique_id: str | None) -> set[int] | None:
    """Indices of this node's outputs that some node in the graph consumes; None when the graph is unknown."""
    if not prompt or unique_id is None:
        return None
    linked = set()
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(unique_id):
                linked.add(int(value[1]))
    return linked
