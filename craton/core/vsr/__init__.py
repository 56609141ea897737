"""Viewstamped Replication: the replica machine and its messages."""
