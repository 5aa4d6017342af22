"""Import the repository root as a package under a fixed name, as ComfyUI imports custom_nodes/<folder>.

The checkout's folder name is arbitrary (and may not be a Python identifier), so tests and benchmarks load the pack
through this one function."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK = "gmi_video_pack"


def load_pack():
    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = module
        spec.loader.exec_module(module)
    return sys.modules[PACK]
