"""Looking at the daemon's child processes through /proc (pacat streams)."""

from __future__ import annotations

from pathlib import Path


def pacats_of(home: Path) -> dict[int, str]:
    """pacat processes started by the daemon living in ``home`` (found by their
    environment, so they are found even after the daemon died): pid -> state."""
    found = {}
    marker = f"XDG_RUNTIME_DIR={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "pacat":
                continue
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        found[int(entry.name)] = stat.rsplit(")", 1)[1].split()[0]
    return found


def children_named(pid: int, name: str) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if comm == name and ppid == pid:
            kids.append(int(entry.name))
    return kids
