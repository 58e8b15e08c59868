"""Small guest apps used by the node-agent's tests and benchmarks (built with tars_guests.build)."""

from pathlib import Path

TESTAPPS_DIR = Path(__file__).resolve().parent
ECHO_APP = TESTAPPS_DIR / "echo"
HOSTILE_APP = TESTAPPS_DIR / "hostile"
# Waits in clock.sleep: a load whose cost is time, not CPU (bench/autoscale.py).
SLEEP_APP = TESTAPPS_DIR / "sleep"
