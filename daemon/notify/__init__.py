"""Notifications that leave the daemon: a durable outbox, its sender and its channels.

``outbox`` (no I/O: which events make which notifications, and the rows' types) is imported by
the store; ``sender`` and the channels (``webhooks``, ``ntfy``, ``webpush``) by the daemon.
"""
