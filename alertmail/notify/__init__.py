"""Notify: alert events become mails: grouping, threading, silences, the storm cap, heartbeat and journal."""
