"""Logging: structured journal entries under systemd, readable lines in a terminal.

Under systemd, records go to the journal through ``systemd.journal.JournalHandler``
with the record's journal fields (``JOB``, ``CLIENT``, ``EVENT``, passed as
``extra=``) as fields of their own, so ``journalctl --user -u tts JOB=12`` finds
one job's life. Running in a terminal, records are plain lines on stderr.

"Under systemd" means stderr is the journal stream the manager connected
(``JOURNAL_STREAM`` names its device and inode). ``INVOCATION_ID`` alone is not
trusted: it leaks into shells started from desktop services, where stderr is a
terminal.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

#: A journal field name: upper-case letters, digits and underscores, not leading "_".
_FIELD = re.compile(r"[A-Z][A-Z0-9_]*")

#: Attributes of every LogRecord (never journal fields, even if upper-case).
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__)

IDENTIFIER = "ttsd"
STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """The record's own journal fields: its upper-case ``extra=`` keys, as strings."""
    return {
        key: str(value)
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRS and _FIELD.fullmatch(key) and value is not None
    }


def stderr_is_journal(env: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journal stream systemd set up (``JOURNAL_STREAM``)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def journal_handler() -> logging.Handler | None:
    """A handler that writes structured entries to the journal, or None without
    systemd-python."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None

    class FieldJournalHandler(JournalHandler):  # type: ignore[misc]
        """Sends only valid field names: ``JournalHandler`` forwards every record
        attribute, and journald drops the lower-case ones anyway."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields: dict[str, Any] = {**self._extra, **journal_fields(record)}
                if record.exc_info:
                    fields["EXCEPTION_TEXT"] = logging.Formatter().formatException(record.exc_info)
                self.send(
                    self.format(record),
                    PRIORITY=str(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **fields,
                )
            except Exception:
                self.handleError(record)

    return FieldJournalHandler(SYSLOG_IDENTIFIER=IDENTIFIER)


def syslog_priority(level: int) -> int:
    """The syslog priority of a logging level (debug 7, info 6, warning 4, error 3)."""
    for limit, priority in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4)):
        if level <= limit:
            return priority
    return 3 if level <= logging.ERROR else 2


class _PriorityPrefix(logging.Formatter):
    """``<N>`` syslog priority prefixes, which journald reads from a service's stderr."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{syslog_priority(record.levelno)}>" + super().format(record)


def setup_logging(
    level: str,
    env: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> str:
    """Configure the root logger; return where logs go: ``journal`` or ``stderr``."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    stream = sys.stderr if stream is None else stream
    handler: logging.Handler | None = None
    target = "stderr"
    if stderr_is_journal(env, _fileno(stream)):
        handler = journal_handler()
        target = "journal"
        if handler is None:
            # No systemd-python: stderr still reaches the journal, without fields.
            handler = logging.StreamHandler(stream)
            handler.setFormatter(_PriorityPrefix("%(name)s: %(message)s"))
    if handler is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    root.addHandler(handler)
    if root.level > logging.DEBUG:
        # websockets logs every connection at info; that is debugging detail here.
        logging.getLogger("websockets").setLevel(logging.WARNING)
    return target


def _fileno(stream: TextIO) -> int:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return -1
