"""Task functions for the isolated worker pool tests (importable by spawned processes)."""

import os
import time


def behave(task: str) -> str:
    if task == "hang":
        time.sleep(60)
    if task == "crash":
        os.abort()
    if task == "raise":
        raise ValueError("bad task")
    return task.upper()
