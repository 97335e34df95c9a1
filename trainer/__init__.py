"""The streaming trainer (see issue: the streaming trainer)."""
