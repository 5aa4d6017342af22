"""What the Comfy Registry and ComfyUI-Manager get: a license that matches pyproject, developer files left out, no
torch family in requirements.txt (it would replace the user's CUDA build), no eval/exec/shell=True anywhere."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [p for p in ROOT.rglob("*.py") if not {".venv", "tests", "bench", ".git"} & set(p.relative_to(ROOT).parts)]


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_requirements_never_list_the_torch_family():
    names = [re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower()
             for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert names and not {"torch", "torchvision", "torchaudio"} & set(names)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not any(d.lower().startswith(("torch", "torchvision", "torchaudio")) for d in deps)


def test_developer_files_are_left_out_of_the_published_node():
    ignored = {line.strip() for line in (ROOT / ".comfyignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"tests/", "bench/", "docs/", ".ci/"} <= ignored


def test_no_eval_exec_or_shell_in_the_shipped_code():
    assert SHIPPED
    for path in SHIPPED:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                assert name not in ("eval", "exec"), f"{path}: {name}()"
                assert not any(k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords), \
                    f"{path}: shell=True"
