"""Execution: shard partition, isolated worker processes, engines."""
