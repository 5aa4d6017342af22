"""Where the API key comes from, and how it is kept out of every text the pack writes."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import KeyMissingError

ENV_VAR = "GMI_API_KEY"
KEY_FILE_NAME = "api_key"

HOW_TO_SET = (
    f"No GMI Cloud API key: set the {ENV_VAR} environment variable before starting ComfyUI "
    "(or save the key in the GMI Cloud settings panel), then queue again."
)


def read_key_file(path: Path | None) -> str | None:
    """The key stored in ``path`` (first line, trimmed), or None when there is no usable file."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    return key or None


def resolve_api_key(key_file: Path | None = None, environ: dict | None = None) -> str:
    """The environment variable wins; then the key file. Raises KeyMissingError with how-to text."""
    env = os.environ if environ is None else environ
    key = (env.get(ENV_VAR) or "").strip()
    if key:
        return key
    key = read_key_file(key_file)
    if key:
        return key
    raise KeyMissingError(HOW_TO_SET)


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each secret replaced by a short marker."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text
