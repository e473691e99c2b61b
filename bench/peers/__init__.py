"""Peer systems measured side by side with agentd; each script runs in ``bench/.venv-peers``."""
