"""Named points in a stage's work where the fault-injection tests stop a command.

A stage calls :func:`reached` where a kill matters most and timing alone cannot find the
moment: an index version written but not yet published, a report's pictures written but
not the report. With ``GENREFLOW_TESTING_STOP_AT=<name>`` in its environment, a process
reaching that point writes the name to the file ``GENREFLOW_TESTING_STOP_FILE`` and
waits there to be killed (``tests/faults.py``). Without it a point costs a dictionary
lookup. A testing aid: nothing sets these variables outside the tests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STOP_AT_ENV = "GENREFLOW_TESTING_STOP_AT"
STOP_FILE_ENV = "GENREFLOW_TESTING_STOP_FILE"


def reached(name: str) -> None:
    """The calling stage is at point ``name``; stop here if a test asked for it."""
    if os.environ.get(STOP_AT_ENV) != name:
        return
    marker = os.environ.get(STOP_FILE_ENV)
    if marker:
        Path(marker).write_text(name, encoding="utf-8")
    while True:  # until the test's SIGKILL
        time.sleep(1.0)
