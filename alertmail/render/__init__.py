"""Rendering: alert events into a text and HTML mail with charts; templates people can override."""
