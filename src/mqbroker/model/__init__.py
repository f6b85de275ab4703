"""The message model shared by every layer above the protocol."""
