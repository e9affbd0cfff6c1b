"""Headless Chromium for tests of web pages against the daemon (Debian's ``chromium``).

Started as this machine needs it: as root (``--no-sandbox``), with no GPU, and with
Chromium's own background traffic off (the network is closed here, and every blocked
connection would only slow it down).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextlib.contextmanager
def chromium(
    url: str, profile: Path, flags: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """Open ``url`` in a fresh headless Chromium for the ``with`` block, then kill it and
    every helper process it started."""
    browser = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-first-run",
            *flags,
            f"--user-data-dir={profile}",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its helpers share our new process group
    )
    try:
        yield browser
    finally:
        os.killpg(browser.pid, signal.SIGKILL)
        browser.wait(10)
