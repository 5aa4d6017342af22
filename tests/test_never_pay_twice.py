"""Issue 10: a fake GMI that answers the way a changed API, a confused proxy or a full disk would. Each case counts
the POSTs (what is paid) and checks that a paid job is kept and the user reads one clear line."""
from __future__ import annotations

import asyncio
import sqlite3
import unicodedata

import pytest
from aiohttp import web

from gmi_video_pack.gmi.errors import DownloadError, GMIError, InputError, JobFailedError, SubmitUnknownError
from gmi_video_pack.gmi.jobs import Journal, JobState
from test_cli import cli, environment
from test_lifecycle import make_runner, run


def journal(tmp_path) -> Journal:
    return Journal(tmp_path / "user" / "jobs.sqlite3")


def only_job(tmp_path):
    (job,) = journal(tmp_path).all()
    return job


def posts(gmi) -> int:
    return len(gmi.post_bodies)


# --- 1. a success without a usable video URL is paid: kept, re-read, never bought again --------------------------

@pytest.mark.parametrize("outcome", [{"media_urls": []},
                                     {"thumbnail_image_url": "https://media.invalid/t.jpg"},
                                     {"media_urls": [{"id": "0", "url": "https://media.invalid/t.jpg"}]}])
async def test_success_without_a_video_url_is_kept_and_never_resubmitted(gmi, fake_time, tmp_path, clips, outcome):
    gmi.outcome_override = outcome
    with pytest.raises(GMIError) as err:
        await run(gmi, fake_time, tmp_path)
    message = str(err.value)
    rid = gmi.created[0]
    assert rid in message and "no video" in message and "media_urls" in str(outcome) or "thumbnail" in message
    assert only_job(tmp_path).state is JobState.SUCCEEDED and only_job(tmp_path).request_id == rid
    reads = gmi.status_reads()
    with pytest.raises(GMIError):
        await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1 and gmi.status_reads() > reads  # asked GMI again, bought nothing
    gmi.outcome_override = None  # GMI now gives the link: the same request is collected
    result = await run(gmi, fake_time, tmp_path)
    assert result.request_id == rid and posts(gmi) == 1
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_success_rereads_a_few_times_before_giving_up(gmi, fake_time, tmp_path):
    gmi.finish_on_post = True
    gmi.outcome_override = {"media_urls": []}
    with pytest.raises(GMIError):
        await run(gmi, fake_time, tmp_path)
    assert 2 <= gmi.status_reads() <= 6


async def test_video_url_under_an_unknown_key_is_found(gmi, fake_time, tmp_path, clips):
    gmi.finish_on_post = True
    await run(gmi, fake_time, tmp_path, take=9)  # learn where the fake serves media
    url = f"{gmi.media_url}/media/{gmi.jobs[gmi.created[0]]['media']}.mp4"
    gmi.outcome_override = {"result": {"videos": [{"uri": url}]},
                            "thumbnail_image_url": f"{gmi.media_url}/media/x.jpg"}
    result = await run(gmi, fake_time, tmp_path)
    assert result.path.read_bytes() == clips[("16:9", True)].read_bytes()


# --- 2. a lost submit resubmits only on positive proof that it made nothing ---------------------------------------

async def test_following_our_message_collect_then_requeue_pays_once(gmi, fake_time, tmp_path):
    gmi.listing = True
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    gmi.jobs[gmi.created[0]]["echo"] = False  # GMI echoes payloads unreliably: the take cannot be matched
    with pytest.raises(SubmitUnknownError) as err:
        await run(gmi, fake_time, tmp_path)
    assert gmi.created[0] in str(err.value)
    await make_runner(gmi, fake_time, tmp_path).collect(gmi.created[0], timeout_s=600)  # as the message says
    result = await run(gmi, fake_time, tmp_path)  # then the take is queued again
    assert posts(gmi) == 1 and result.request_id == gmi.created[0]


@pytest.mark.parametrize("times", ["ms", "iso"])
async def test_lost_submit_is_found_whatever_the_time_format(gmi, fake_time, tmp_path, times):
    gmi.listing, gmi.listing_times = True, times
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    result = await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1 and result.request_id == gmi.created[0]


async def test_unparseable_listing_times_are_no_proof(gmi, fake_time, tmp_path):
    gmi.listing = True
    gmi.faults["post"].append({"status": 500, "body": {"error": "Backend error"}})  # made nothing, or did it?
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    gmi.add_console_job({"prompt": "other"})
    original = gmi._record

    def garbled(job):
        record = original(job)
        record["created_at"] = "yesterday-ish"
        return record

    gmi._record = garbled
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1


async def test_a_listing_page_that_does_not_reach_back_is_no_proof(gmi, fake_time, tmp_path):
    gmi.listing, gmi.listing_page = True, 3
    gmi.faults["post_after_create"].append("reset")
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    gmi.jobs[gmi.created[0]]["echo"] = False
    fake_time.now += 3600  # an hour of other work later: the newest page holds only newer jobs
    for n in range(5):
        gmi.add_console_job({"prompt": f"later {n}"})
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1


async def test_a_complete_listing_without_the_job_allows_one_new_submit(gmi, fake_time, tmp_path):
    gmi.listing, gmi.listing_page = True, 3
    gmi.faults["post"].append({"status": 500, "body": {"error": "Backend error"}})
    with pytest.raises(SubmitUnknownError):
        await run(gmi, fake_time, tmp_path)
    fake_time.now -= 7200
    gmi.add_console_job({"prompt": "long before"})  # the page reaches past the window: it covers it
    fake_time.now += 7200
    result = await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 2 and result.request_id in gmi.created


# --- 3. what is saved is a whole video, and a broken saved file is fetched again, never re-bought -----------------

async def test_a_proxy_page_is_never_saved_as_the_video(gmi, fake_time, tmp_path, clips):
    async def portal(request):
        return web.Response(text="<html>Sign in to the hotel Wi-Fi</html>", content_type="text/html")

    gmi.faults["media"] += [portal] * 8
    with pytest.raises(DownloadError) as err:
        await run(gmi, fake_time, tmp_path)
    assert gmi.created[0] in str(err.value)
    assert not list((tmp_path / "output").glob("*.mp4")) and only_job(tmp_path).state is JobState.SUCCEEDED
    gmi.faults["media"].clear()
    result = await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1 and result.path.read_bytes() == clips[("16:9", True)].read_bytes()


async def test_a_body_cut_short_without_a_length_is_never_saved(gmi, fake_time, tmp_path):
    async def close_delimited_half(request):
        job = next(j for j in gmi.jobs.values() if j.get("media") in request.path)
        data = job["clip"].read_bytes()
        request.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n\r\n"
                                + data[: len(data) // 2])
        request.transport.close()
        return web.Response()

    gmi.faults["media"] += [close_delimited_half] * 8
    with pytest.raises(DownloadError):
        await run(gmi, fake_time, tmp_path)
    assert not list((tmp_path / "output").glob("*.mp4"))


async def test_a_broken_saved_file_is_downloaded_again_not_reused(gmi, fake_time, tmp_path, clips):
    first = await run(gmi, fake_time, tmp_path)
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])
    again = await run(gmi, fake_time, tmp_path)
    assert not again.reused and posts(gmi) == 1 and again.path.read_bytes() == data


# --- 4. a journal deleted or emptied while a job runs is written again with the job -------------------------------

@pytest.mark.parametrize("how", ["delete", "drop"])
async def test_journal_lost_while_polling_is_recreated_with_the_running_job(gmi, fake_time, tmp_path, how):
    gmi.never_finish = True
    path = tmp_path / "user" / "jobs.sqlite3"

    async def lose_journal(request):
        if gmi.status_reads() == 1:
            if how == "delete":
                for suffix in ("", "-wal", "-shm"):
                    path.with_name(path.name + suffix).unlink(missing_ok=True)
            else:
                with sqlite3.connect(path) as db:
                    db.execute("DROP TABLE jobs")
        return None

    gmi.status_hook = lose_journal
    task = asyncio.ensure_future(run(gmi, fake_time, tmp_path))
    while gmi.status_reads() < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    job = only_job(tmp_path)
    assert job.request_id == gmi.created[0] and job.state is JobState.SUBMITTED
    gmi.never_finish, gmi.status_hook = False, None
    result = await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1 and result.request_id == gmi.created[0]


# --- 5. an output folder that cannot be written is found before paying ---------------------------------------------

async def test_unwritable_output_folder_is_refused_before_paying(gmi, fake_time, tmp_path):
    (tmp_path / "output").write_text("a file where the folder should be")
    with pytest.raises(InputError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "output" in str(err.value) and "\n" not in str(err.value)
    assert posts(gmi) == 0 and gmi.api_requests == []


# --- 6. GMI's texts are redacted before they are shown or stored ---------------------------------------------------

async def test_gmi_texts_echoing_part_of_the_key_are_redacted_everywhere(gmi, fake_time, tmp_path, caplog):
    gmi.final_status = "failed"
    gmi.failure_record = {"error": f"token {gmi.key[:12]}... is not allowed to use this model"}
    with pytest.raises(JobFailedError) as err:
        await run(gmi, fake_time, tmp_path)
    stored = (tmp_path / "user" / "jobs.sqlite3").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "user").glob("jobs.sqlite3-*"))
    assert gmi.key[:12] not in str(err.value) and gmi.key[:12].encode() not in stored
    assert gmi.key[:12] not in caplog.text and "not allowed" in str(err.value)


# --- 9. request ids are path segments, never paths -------------------------------------------------------------------

async def test_a_hostile_request_id_from_gmi_stays_inside_the_status_path(gmi, fake_time, tmp_path, clips):
    gmi.next_ids = ["../../models/kling?x=1"]
    result = await run(gmi, fake_time, tmp_path)
    status_paths = [path for method, path, _ in gmi.api_requests if method == "GET" and not path.endswith("/models/kling-v3-text-to-video")]
    assert status_paths and all(p == "/api/v1/ie/requestqueue/apikey/requests/../../models/kling?x=1"
                                for p in status_paths)
    assert result.path.parent == tmp_path / "output" and posts(gmi) == 1


async def test_cli_collect_refuses_an_id_the_node_refuses(gmi, tmp_path):
    code, out, err = await cli("collect", "../models", "--out", str(tmp_path / "out"), env=environment(gmi, tmp_path))
    assert code == 2 and err.strip().count("\n") == 0 and "request id" in err
    assert gmi.api_requests == []


# --- 10. redirects are never followed with the prompt or the key ---------------------------------------------------

async def test_a_redirected_submit_is_not_followed(gmi, fake_time, tmp_path):
    elsewhere = []

    async def other_host(request):
        elsewhere.append(request.path)
        return web.json_response({"request_id": "stolen", "status": "queued"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", other_host)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        gmi.faults["post"].append({"status": 307, "body": {},
                                   "headers": {"Location": f"http://127.0.0.1:{port}/requests"}})
        with pytest.raises(GMIError) as err:
            await run(gmi, fake_time, tmp_path)
    finally:
        await runner.cleanup()
    assert elsewhere == [] and "307" in str(err.value)
    assert only_job(tmp_path).state is not JobState.SUBMITTED and only_job(tmp_path).request_id is None


# --- 11. one file per request id -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ids", [("a" * 80 + "1", "a" * 80 + "2"), ("x/y-1234", "x_y-1234")])
async def test_request_ids_alike_get_their_own_files(gmi, fake_time, tmp_path, clips, ids):
    gmi.next_ids = list(ids)
    first = await run(gmi, fake_time, tmp_path, take=0, aspect_ratio="16:9")
    second = await run(gmi, fake_time, tmp_path, take=1, aspect_ratio="1:1")
    assert first.path != second.path
    assert first.path.read_bytes() == clips[("16:9", True)].read_bytes()
    assert second.path.read_bytes() == clips[("1:1", True)].read_bytes()


# --- 13. status words outside the known set ------------------------------------------------------------------------

@pytest.mark.parametrize("word", ["completed", " Success ", "SUCCEEDED"])
async def test_synonyms_of_success_finish_the_job(gmi, fake_time, tmp_path, word):
    gmi.status_words = {"success": word}
    result = await run(gmi, fake_time, tmp_path)
    assert result.path.is_file() and gmi.status_reads() <= 4


async def test_canceled_in_american_spelling_ends_the_job(gmi, fake_time, tmp_path):
    gmi.final_status, gmi.status_words = "cancelled", {"cancelled": "canceled"}
    with pytest.raises(JobFailedError):
        await run(gmi, fake_time, tmp_path)
    assert gmi.status_reads() <= 4


async def test_an_unknown_status_word_stops_after_a_few_reads_keeping_the_job(gmi, fake_time, tmp_path):
    gmi.never_finish = True
    gmi.status_words = {"queued": "zorgling", "processing": "zorgling"}
    with pytest.raises(GMIError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "zorgling" in str(err.value) and gmi.created[0] in str(err.value)
    assert gmi.status_reads() <= 6 and only_job(tmp_path).state is JobState.SUBMITTED


# --- 14. a key that cannot be sent is not a lost submit -------------------------------------------------------------

async def test_a_malformed_key_sends_nothing_and_leaves_the_take_free(gmi, fake_time, tmp_path):
    with pytest.raises(InputError) as err:
        await run(gmi, fake_time, tmp_path, key=gmi.key[:10] + "\n" + gmi.key[10:])
    assert gmi.key[:10] not in str(err.value) and gmi.api_requests == []
    assert all(job.state is not JobState.SUBMIT_UNKNOWN for job in journal(tmp_path).all())
    result = await run(gmi, fake_time, tmp_path)
    assert posts(gmi) == 1 and result.path.is_file()


# --- 16. OS and SQLite faults are one line, and a request id always reaches the user -------------------------------

async def test_a_journal_that_fills_after_the_post_still_gives_the_request_id(gmi, fake_time, tmp_path, monkeypatch):
    record = Journal.record

    def disk_full_once_submitted(self, job):
        if job.state is JobState.SUBMITTED:
            def full(db):
                raise sqlite3.OperationalError("database or disk is full")

            return self._use(full)  # the journal's own handling of a full disk
        record(self, job)

    monkeypatch.setattr(Journal, "record", disk_full_once_submitted)
    with pytest.raises(GMIError) as err:
        await run(gmi, fake_time, tmp_path)
    assert gmi.created[0] in str(err.value) and "disk is full" in str(err.value)


async def test_a_journal_path_that_is_a_folder_is_one_line(gmi, fake_time, tmp_path):
    (tmp_path / "user" / "jobs.sqlite3").mkdir(parents=True)
    with pytest.raises(GMIError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "journal" in str(err.value) and "\n" not in str(err.value) and posts(gmi) == 0


async def test_a_garbage_journal_is_one_line(gmi, fake_time, tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(GMIError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "journal" in str(err.value) and posts(gmi) == 0


async def test_cli_with_a_folder_for_journal_is_one_line(gmi, tmp_path):
    (tmp_path / "j").mkdir()
    code, out, err = await cli("--journal", str(tmp_path / "j"), "generate", "--prompt", "x", "--out",
                               str(tmp_path / "o"), env=environment(gmi, tmp_path))
    assert code in (1, 2) and err.strip().count("\n") == 0 and "Traceback" not in err and posts(gmi) == 0


def test_a_lone_surrogate_in_the_prompt_is_refused_in_one_line():
    from test_lifecycle import payload

    with pytest.raises(InputError, match="prompt"):
        payload(prompt="a fox \udc80 in snow")


async def test_one_takes_os_error_leaves_the_batch_summary(gmi, tmp_path):
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / "bad_kling-v3-text-to-video_rid-bad-0002_frames").write_text("a file where the frames folder goes")
    batch = tmp_path / "b.jsonl"
    batch.write_text('{"name": "good", "prompt": "a"}\n{"name": "bad", "prompt": "b"}\n')
    gmi.finish_on_post, gmi.next_ids = True, ["rid-good-0001", "rid-bad-0002"]
    code, out, err = await cli("batch", str(batch), "--out", str(out_dir), "--concurrency", "1", "--png",
                               env=environment(gmi, tmp_path))
    assert code == 1 and "Traceback" not in err
    rows = {line.split()[0]: line.split()[1] for line in out.strip().splitlines()[1:]}
    assert rows == {"good": "done", "bad": "failed"} and "rid-bad-0002" in out


# --- 17. the same visible text is the same take ---------------------------------------------------------------------

async def test_the_same_prompt_in_nfc_and_nfd_is_one_paid_take(gmi, fake_time, tmp_path):
    text = "café crème at dawn"
    await run(gmi, fake_time, tmp_path, prompt=unicodedata.normalize("NFC", text))
    again = await run(gmi, fake_time, tmp_path, prompt=unicodedata.normalize("NFD", text))
    assert again.reused and posts(gmi) == 1


# --- 8. the journal (prompts, media links) is the owner's alone -----------------------------------------------------

async def test_a_new_journal_and_its_folder_are_owner_only(gmi, fake_time, tmp_path):
    await run(gmi, fake_time, tmp_path)
    folder = tmp_path / "user"
    files = [folder / "jobs.sqlite3"] + list(folder.glob("jobs.sqlite3-*"))
    assert folder.stat().st_mode & 0o777 == 0o700
    assert files and all(f.stat().st_mode & 0o077 == 0 for f in files)


async def test_a_journal_in_a_folder_that_cannot_be_made_is_one_line(gmi, fake_time, tmp_path):
    (tmp_path / "user").write_text("a file where the journal's folder should be")
    with pytest.raises(GMIError) as err:
        await run(gmi, fake_time, tmp_path)
    assert "journal" in str(err.value) and "\n" not in str(err.value) and posts(gmi) == 0


def test_a_journal_in_a_read_only_folder_says_make_it_writable(tmp_path, monkeypatch):
    from gmi_video_pack.gmi import journal as journal_module

    monkeypatch.setattr(journal_module.os, "access", lambda path, mode: False)  # a read-only mount (root ignores modes)
    refused = sqlite3.OperationalError("unable to open database file")
    text = journal_module.journal_trouble(tmp_path / "jobs.sqlite3", refused)
    assert "writable" in text and "not a folder" not in text
