"""Where the API key comes from, and how it is kept out of every text the pack writes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import InputError, KeyMissingError

ENV_VAR = "GMI_API_KEY"
KEY_FILE_NAME = "api_key"
REDACTED = "[redacted]"
SECRET_PREFIX = 8  # a run this long of a key's first characters (an error echoing the key cut short) is the key


def how_to_set(key_file: Path | None) -> str:
    where = f", or put the key alone in {key_file}" if key_file is not None else ""
    return (f"No GMI Cloud API key: set the {ENV_VAR} environment variable{where} (in ComfyUI: Settings > GMI Cloud "
            "> API key does that for you), then try again.")


def read_key_file(path: Path | None) -> str | None:
    """The key stored in ``path`` (first line, trimmed), or None when there is no usable file."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM from a Windows editor is not part of the key
    except (FileNotFoundError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    key = text.strip().splitlines()[0].strip() if text.strip() else ""
    return key or None


def resolve_api_key(key_file: Path | None = None, environ: dict | None = None) -> str:
    """The environment variable wins; then the key file. Raises KeyMissingError with how-to text."""
    env = os.environ if environ is None else environ
    key = (env.get(ENV_VAR) or "").strip()
    if key:
        return _sendable(key, f"the {ENV_VAR} environment variable")
    key = read_key_file(key_file)
    if key:
        return _sendable(key, str(key_file))
    raise KeyMissingError(how_to_set(key_file))


def _sendable(key: str, where: str) -> str:
    """``key``, or InputError naming ``where`` it came from: a key that cannot go into an HTTP header is refused here,
    before a request starts, not inside the POST where the outcome would look lost."""
    if "\n" in key or "\r" in key:
        kind = "a line break"
    elif any(ch.isspace() for ch in key):
        kind = "a space"
    elif not key.isprintable():
        kind = "an invisible character"
    else:
        return key
    raise InputError(f"The API key in {where} contains {kind}: set it again to the key alone, copied from GMI Cloud's "
                     "console.")


def redact(text: str, *secrets: str | None) -> str:
    """``text`` with every occurrence of each secret, and of any run of its first 8 or more characters, replaced by a
    short marker."""
    for secret in secrets:
        if not secret or len(secret) < 4:
            continue
        text = text.replace(secret, REDACTED)
        head, parts, start = secret[:SECRET_PREFIX], [], 0
        while (found := text.find(head, start)) >= 0:
            end = found + len(head)
            while end - found < len(secret) and end < len(text) and text[end] == secret[end - found]:
                end += 1
            parts += [text[start:found], REDACTED]
            start = end
        text = "".join(parts) + text[start:]
    return text


def check_key_text(text: object) -> str:
    """The key as it will be stored, or InputError saying what is wrong with it (never quoting it)."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("The API key is empty: paste the key from GMI Cloud's console.")
    key = text.strip()
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise InputError("The API key contains spaces or invisible characters: copy it again from GMI Cloud's console.")
    if not (16 <= len(key) <= 512):
        raise InputError(f"The API key is {len(key)} characters long, which no GMI key is: copy the whole key "
                         "from GMI Cloud's console.")
    return key


def store_key(path: Path, text: object) -> None:
    """Save the key for the ComfyUI user, readable by the owner only (0600 in a 0700 folder), atomically."""
    key = check_key_text(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    # A new file of its own (O_EXCL, 0600): opening a fixed name would reuse a stale temp file and keep its mode.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def forget_key(path: Path) -> None:
    try:
        Path(path).unlink()
    except FileNotFoundError:
        pass


def key_status(path: Path | None, environ: dict | None = None) -> dict:
    """What the settings panel may show: whether a key is set, where from, and its last four characters."""
    env = os.environ if environ is None else environ
    if (env.get(ENV_VAR) or "").strip():
        key, source = env[ENV_VAR].strip(), "environment"
    else:
        key, source = read_key_file(path), "file"
    if not key:
        return {"set": False, "source": None, "last4": None}
    return {"set": True, "source": source, "last4": key[-4:] if len(key) >= 12 else None}
