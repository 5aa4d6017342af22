"""Turn a UI-format workflow (what the menu loads) into the API-format graph that POST /prompt takes."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # ComfyUI 0.33+: a combo whose chosen option brings its own widgets
UI_ONLY = {"Note", "MarkdownNote", "Reroute"}


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES or kind == DYNAMIC_COMBO


def _option_inputs(spec, value) -> list[tuple[str, list]]:
    """The widgets a dynamic combo's chosen option adds, in the frontend's order (required, then optional)."""
    if spec[0] != DYNAMIC_COMBO:
        return []
    option = next((o for o in spec[1].get("options", []) if o.get("key") == value), None)
    inputs = (option or {}).get("inputs", {})
    return [*inputs.get("required", {}).items(), *inputs.get("optional", {}).items()]


def _take_widget(name: str, spec, values: list, inputs: dict) -> None:
    """Moves the widget's saved value (and those of a dynamic combo's sub-widgets, as ``name.sub``) into inputs."""
    value = values.pop(0)
    if _has_control(name, spec) and values:
        values.pop(0)
    inputs[name] = value
    for sub, sub_spec in _option_inputs(spec, value):
        if _is_widget(sub_spec) and values:
            _take_widget(f"{name}.{sub}", sub_spec, values, inputs)


def _has_control(name: str, spec) -> bool:
    cfg = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0] in ("INT", "FLOAT") and (cfg.get("control_after_generate") or name in ("seed", "noise_seed"))


def to_api(workflow: dict, object_info: dict) -> dict:
    """API graph; raises KeyError/ValueError when a node type, input or link does not fit ``object_info``."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY:
            continue
        info = object_info[node["type"]]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = order.get("required", []) + order.get("optional", []) if order else list(specs)
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        widgets = node.get("widgets_values") or []
        # Some packs (VideoHelperSuite) save widgets by name, including ones their format adds at run time.
        named = {k: v for k, v in widgets.items() if not isinstance(v, dict)} if isinstance(widgets, dict) else None
        values = [] if named is not None else list(widgets)
        inputs = dict(named or {})
        for name in names:
            spec = specs[name]
            if _is_widget(spec) and named is None:
                if not values:
                    if name in linked:
                        pass
                    else:
                        continue
                else:
                    _take_widget(name, spec, values, inputs)
            if name in linked:
                link = links[linked[name]]
                if link[3] != node["id"]:
                    raise ValueError(f"link {link[0]} does not end at node {node['id']}")
                inputs[name] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph
