"""train.py with a fault patched in, for the fault-injection tests (run as a script, under torchrun or not).

STYLENAT_TEST_FAULT=slow_save       every checkpoint write pauses after its first chunk, so a test can
                                    SIGKILL the run while a training state is half written
STYLENAT_TEST_FAULT=raise_rank1     rank 1 raises in its G step of step 1
"""

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from stylenat import files  # noqa: E402
from stylenat.training.step import GanStep  # noqa: E402

FAULT = os.environ.get("STYLENAT_TEST_FAULT", "")

if FAULT == "slow_save":
    _write = files._WriteTracker.write

    def slow_write(self, data):
        written = _write(self, data)
        if not getattr(self, "_paused", False):
            self._paused = True
            time.sleep(0.3)
        return written

    files._WriteTracker.write = slow_write

elif FAULT == "raise_rank1":
    _g_step = GanStep.g_step

    def failing_g_step(self, fakes=None):
        if self.random.rank == 1 and self.index == 1:
            raise RuntimeError("injected fault in the G step")
        return _g_step(self, fakes)

    GanStep.g_step = failing_g_step

elif FAULT:
    raise SystemExit(f"unknown STYLENAT_TEST_FAULT={FAULT!r}")

sys.path.insert(0, str(REPO))
import train  # noqa: E402

if __name__ == "__main__":
    sys.exit(train.main(sys.argv[1:]))
