"""Bridges from other speech interfaces to the ttsd daemon."""
