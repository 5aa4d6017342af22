"""Errors a user sees. Each message is one line written for the artist: what happened and what to do."""
from __future__ import annotations


class GMIError(Exception):
    """Base of every error the pack raises on purpose; ``str(error)`` is the whole message."""


class InputError(GMIError):
    """A node input or CLI argument is invalid; nothing was submitted."""


class KeyMissingError(GMIError):
    """No API key is configured."""


class HTTPError(GMIError):
    """GMI answered with a non-2xx status."""

    def __init__(self, message: str, *, status: int, gmi_text: str = "", request_id: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.gmi_text = gmi_text
        self.request_id = request_id
        self.retry_after = retry_after


class AuthError(HTTPError):
    """401/403: the key is wrong, missing at GMI, or not entitled to the model."""


class RateLimitedError(HTTPError):
    """429 or 503 that outlasted the retries and the deadline."""


class SubmitUnknownError(GMIError):
    """The POST was sent but its answer was lost: a job may exist and may be billed."""


class JobFailedError(GMIError):
    """GMI reports the job failed or was cancelled."""

    def __init__(self, message: str, *, request_id: str, status: str, reason: str):
        super().__init__(message)
        self.request_id = request_id
        self.status = status
        self.reason = reason


class JobTimeoutError(GMIError):
    """The job did not finish before the deadline; it is kept in the journal to be collected later."""

    def __init__(self, message: str, *, request_id: str):
        super().__init__(message)
        self.request_id = request_id


class DownloadError(GMIError):
    """The finished video could not be fetched or was incomplete."""


class MediaError(GMIError):
    """The video file could not be read or decoded."""


class MemoryShortError(GMIError):
    """Decoding would not fit in the memory that is free."""


class SpendCapError(GMIError):
    """A new submit would take this session's spending past the cap the user set."""


class JournalError(GMIError):
    """The job journal's file cannot be read or written (full disk, read-only, not a database)."""


class UnrecordedJobError(JournalError):
    """GMI accepted a job (it is paid) but the journal could not record it: the message carries the request id."""
