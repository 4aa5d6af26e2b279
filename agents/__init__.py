"""Processes at the edges of the log: poller, webhooks, persist, push, deliver."""
