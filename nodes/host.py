"""The one module that touches ComfyUI's runtime: folders, the interrupt flag, progress, the graph, outputs.

Imported only from comfy_entrypoint(), inside a running ComfyUI.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import InputImpl, io, ui
from server import PromptServer

from ..gmi import connect, media, settings
from ..gmi.errors import MediaError
from ..gmi.progress import Progress, interrupted_text, percent_done
from ..gmi.keys import KEY_FILE_NAME
from .routes import key_routes

SUBFOLDER = "gmi"  # under ComfyUI's output folder
Interrupted = comfy.model_management.InterruptProcessingException  # what ComfyUI raises (and shows) on Cancel


def pack_user_dir() -> Path:
    # user/gmi_cloud is not a ComfyUI user profile, so the /userdata routes never serve the key or the journal.
    return Path(folder_paths.get_user_directory()) / "gmi_cloud"


def output_dir() -> Path:
    return Path(folder_paths.get_output_directory()) / SUBFOLDER


def check_interrupt() -> None:
    """Raises ComfyUI's interrupt exception (shown as 'interrupted', not an error) once Cancel was pressed."""
    comfy.model_management.throw_exception_if_processing_interrupted()


async def until_interrupted(coro, reporter: "Reporter"):
    """Runs ``coro`` as a task. ComfyUI's Cancel only sets a flag, so the flag is read four times a second; when set,
    the task is cancelled (the engine records what it must, e.g. the answer of a POST in flight), the node's text
    says what became of the job, and ComfyUI's interrupt is raised."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if comfy.model_management.processing_interrupted():
                task.cancel()
                await asyncio.wait({task})
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # the engine's own words win (e.g. a submit whose answer was lost)
                reporter.stopped()
                check_interrupt()  # takes ComfyUI's flag as it raises
                # A progress hook took the flag meanwhile: ComfyUI must still hear "interrupted", never a
                # CancelledError (a BaseException its worker thread does not survive).
                raise Interrupted()
    except asyncio.CancelledError:  # the prompt is torn down (e.g. a sibling node failed)
        task.cancel()
        reporter.stopped()
        raise


class Reporter:
    """Lifecycle events -> the node's progress bar and the line of text under it, for the browser that queued."""

    def __init__(self, unique_id: str | None, rehearsal: bool = False):
        self.unique_id = unique_id
        self.rehearsal = rehearsal
        self.request_id: str | None = None
        self.stage = ""
        self.percent = 0.0
        self.bar = comfy.utils.ProgressBar(100, node_id=unique_id)

    def __call__(self, event: Progress) -> None:
        self.request_id = event.request_id or self.request_id
        self.stage = event.stage
        self.percent = max(self.percent, percent_done(event))  # a bar never moves back (a wait, a retry)
        try:
            self.bar.update_absolute(round(self.percent), 100)
        except Interrupted:
            # The bar's hook raises on Cancel, taking ComfyUI's flag as it does: reporting must never break the
            # engine mid-step, and the Cancel must not be lost, so the flag is set again for until_interrupted.
            comfy.model_management.interrupt_current_processing(True)
        self.text(event.text)

    def frames(self, done: int, total: int) -> None:
        self(Progress("decoding", f"decoding frames {done} of {total}", done / total if total else None))

    def stopped(self) -> None:
        """The last word under a node whose run was stopped: the truth about the job, not its last progress line."""
        self.text(interrupted_text(self.request_id, self.rehearsal, submitting=self.stage == "submitting"))

    def text(self, text: str) -> None:
        server = PromptServer.instance
        if self.unique_id is not None and server is not None:
            server.send_progress_text(text, self.unique_id, server.client_id)


def warn_without_decoder() -> None:
    """At start-up, one clear line in the log when no decoder works (every run would be refused before paying)."""
    try:
        media.decoder()
    except MediaError as exc:
        logging.getLogger("gmi").warning("GMI Cloud video nodes: %s", exc)


def key_file() -> Path:
    return pack_user_dir() / KEY_FILE_NAME


def open_runner(reporter: Reporter, rehearsal_label: str | None = None):
    """``async with``: a runner over the pack's journal and output folder (see gmi.connect)."""
    return connect.open_runner(pack_user_dir() / "jobs.sqlite3", output_dir(), key_file(), on_progress=reporter,
                               rehearsal_label=rehearsal_label)


_routes_added = False


def register_routes() -> None:
    """The settings panel's routes, on ComfyUI's server (added before it starts serving)."""
    global _routes_added
    if not _routes_added and PromptServer.instance is not None:
        table = PromptServer.instance.routes  # a RouteTableDef: re-declare each of ours on it
        for route in key_routes(key_file, settings.base_url):
            table.route(route.method, route.path, **route.kwargs)(route.handler)
        _routes_added = True


def video_from_file(path: Path):
    return InputImpl.VideoFromFile(str(path))


def video_preview(path: Path) -> ui.PreviewVideo:
    rel = Path(path).resolve().relative_to(Path(folder_paths.get_output_directory()).resolve())
    subfolder = str(rel.parent) if str(rel.parent) != "." else ""
    return ui.PreviewVideo([ui.SavedResult(rel.name, subfolder, io.FolderType.output)])
