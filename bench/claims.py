"""Claims: one process at a time per configuration on a results directory."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from bench.identity import claim_name


class RunBusy(ValueError):
    """The same configuration is running in another process on the same results directory."""


class Claim:
    """An exclusive claim on one configuration, so that sweeps started side by side on the same
    results directory (one per core, say) never run the same configuration twice.

    The claim is a file ``<results_dir>/.claims/<hash of the key>.claim`` created with O_EXCL,
    holding the host and pid. A claim whose process no longer exists on this host is stale and
    taken over; a claim from another host is respected. Released when the run ends, however it ends.
    Re-entrant: a process that holds a claim acquires it again (``bench sweep`` claims, then the
    runner it calls claims the same configuration) and only the outer holder releases it.
    """

    def __init__(self, results_dir, key):
        self.path = Path(results_dir) / ".claims" / claim_name(key)
        self.held = False

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._ours():
                    return True  # ours already (an outer claim): not released by this one
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": platform.node(), "pid": os.getpid()}, f)
            self.held = True
            return True
        return False

    def owner(self) -> dict | None:
        """``{"host", "pid"}`` of the holder, or None when unclaimed or being written."""
        try:
            return json.loads(self.path.read_text() or "null")
        except (OSError, json.JSONDecodeError):
            return None

    def _ours(self) -> bool:
        return self.owner() == {"host": platform.node(), "pid": os.getpid()}

    def held_elsewhere(self) -> bool:
        """Whether another live process holds the claim right now (a claim from another host counts as
        live, as :meth:`acquire` respects it)."""
        return self.owner() is not None and not self._ours() and not self._stale()

    def holder(self) -> str:
        """``host H, pid P`` of the holder, for messages."""
        who = self.owner() or {}
        return f"host {who.get('host', '?')}, pid {who.get('pid', '?')}"

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return False  # being written right now
        if owner.get("host") != platform.node():
            return False
        try:
            os.kill(int(owner.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
