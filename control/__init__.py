"""Talking to a running agentd over its control socket: wire format, Trio client, agentctl."""

from .client import CommandRefused, ControlClient, DaemonUnreachable
from .protocol import COMMANDS, STREAMING_COMMANDS, LineTooLong, ProtocolError

__all__ = [
    "COMMANDS",
    "STREAMING_COMMANDS",
    "CommandRefused",
    "ControlClient",
    "DaemonUnreachable",
    "LineTooLong",
    "ProtocolError",
]
