"""The API key itself: kept out of every text even when cut short, stored owner-only, refused when it cannot be sent."""
from __future__ import annotations

import os
import stat

import pytest

from gmi_video_pack.gmi.errors import InputError
from gmi_video_pack.gmi.keys import redact, resolve_api_key, store_key

KEY = "gmi-Xq7Lp2Rv9Tz4Wm8Bn6Hc3Jd5"


def test_error_text_echoing_the_start_of_the_key_is_redacted():
    text = f"401 invalid api key '{KEY[:12]}...' (key {KEY[:8]}, full {KEY}) for user"
    out = redact(text, KEY)
    assert KEY[:8] not in out and out.count("[redacted]") == 3
    assert out.startswith("401 invalid api key '[redacted]...'") and out.endswith(" for user")


def test_redaction_leaves_short_runs_of_the_key_and_unrelated_text_alone():
    assert redact(f"model gmi-Xq7 is busy, key {KEY[:7]}", KEY) == f"model gmi-Xq7 is busy, key {KEY[:7]}"
    assert redact("no secrets here", KEY, None, "") == "no secrets here"


def test_stored_key_is_owner_only_even_over_a_stale_world_readable_temp_file(tmp_path):
    path = tmp_path / "gmi_cloud" / "api_key"
    path.parent.mkdir()
    stale = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # left by an earlier crash, or planted
    stale.write_text("old\n")
    os.chmod(stale, 0o644)
    store_key(path, KEY)
    assert path.read_text().strip() == KEY and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("bad,words", [(KEY[:10] + "\n" + KEY[10:], "line break"),
                                       (KEY[:10] + "\r" + KEY[10:], "line break"),
                                       (KEY[:10] + " " + KEY[10:], "space"),
                                       (KEY[:10] + "\u200b" + KEY[10:], "invisible"),
                                       (KEY[:10] + "\x7f" + KEY[10:], "invisible")])
def test_key_that_cannot_be_sent_is_refused_before_anything_is_sent(tmp_path, bad, words):
    key_file = tmp_path / "api_key"
    with pytest.raises(InputError) as from_env:
        resolve_api_key(key_file, environ={"GMI_API_KEY": bad})
    message = str(from_env.value)
    assert "GMI_API_KEY" in message and words in message and "\n" not in message and KEY[:8] not in message
    if "\n" not in bad and "\r" not in bad:  # the file's first line is the key: a line break ends it there
        key_file.write_text(bad + "\n", encoding="utf-8")
        with pytest.raises(InputError) as from_file:
            resolve_api_key(key_file, environ={})
        message = str(from_file.value)
        assert str(key_file) in message and words in message and "\n" not in message and KEY[:8] not in message
