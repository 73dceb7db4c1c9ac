"""Shared fixtures: the real Kafka broker and the DLI simulator live in their own modules."""
