"""A Speech Dispatcher output module (``sd_ttsd``) that speaks through ttsd.

:mod:`.module` speaks the module protocol and forwards to the daemon, :mod:`.text`
turns what Speech Dispatcher sends into plain text, :mod:`.settings` reads the module
config and maps SSIP's settings onto ttsd's. ``docs/speechd.md`` is the user guide.
"""

from ttsd.bridges.speechd.module import main

__all__ = ["main"]
