"""scripts/mutation-check stays in step with the code: every mutant's edit still applies exactly
once and its tests exist (the full check, which runs the tests, is in .ci/run)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutation-check"


def test_every_mutant_still_applies():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    count = int(done.stdout.split()[0])
    assert count >= 15, done.stdout
