"""Two-way file sync between the laptop and a workspace (see docs/sync-protocol.md)."""
