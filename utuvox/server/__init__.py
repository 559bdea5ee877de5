"""The I/O shell: listeners, framing, sessions, lifecycle. Knows sockets, not rules."""
