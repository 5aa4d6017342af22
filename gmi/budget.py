"""The session's spend cap: what new submits of this process may cost in all."""
from __future__ import annotations

import threading

from .errors import SpendCapError
from .models import Price


class SpendCap:
    """What new submits of this process may cost in all (USD), if the user set a cap. Reusing or re-attaching
    costs nothing and never counts. Thread-safe: ComfyUI runs each prompt on a new event loop."""

    def __init__(self, limit: float | None = None):
        self.limit = limit
        self.scope = "this session. Raise the cap or restart ComfyUI to reset it"  # the command line says its own
        self.spent = 0.0
        self._lock = threading.Lock()

    def reserve(self, price: Price) -> None:
        with self._lock:
            if self.limit is not None and self.spent + price.amount > self.limit + 1e-9:
                raise SpendCapError(
                    f"Spend cap reached: this take would cost about ${price.amount:.2f}, and ${self.spent:.2f} of the "
                    f"${self.limit:.2f} cap (GMI_SPEND_CAP_USD) is already spent by {self.scope}; nothing was "
                    "submitted.")
            self.spent += price.amount

    def release(self, price: Price) -> None:
        """A submit that created no job costs nothing."""
        with self._lock:
            self.spent = max(0.0, self.spent - price.amount)


# GMI's per-second price by (API root, model), asked once per process: loop-independent plain data.
