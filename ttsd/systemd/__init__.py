"""Running under systemd: inherited sockets, sd_notify and the journal.

Each module works without a service manager (and without systemd-python where it can):
:mod:`.activation` finds a socket handed over by socket activation, :mod:`.notify`
tells the manager about readiness and status, :mod:`.journal` sets up logging.
"""
