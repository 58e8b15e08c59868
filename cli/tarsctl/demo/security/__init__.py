"""`tarsctl security-check`: deploy hostile guest functions and actually attempt each attack.

Every attempt is judged from what was observed (the HTTP answer, the agents' metrics and audit log,
a listener that never got a connection, a neighbour's latency, what the API server and the operator
said), by a pure verdict function per attack (:mod:`.verdicts`), so a protection switched off shows up
as "not blocked". The score is the share of attempts blocked and nothing else.

- :mod:`.hostile`: the hostile guests; :mod:`.base`: where the check runs and how it reaches it;
- :mod:`.sandbox_probes`: attacks from inside the sandbox (files, sockets, memory, CPU, input, ...);
- :mod:`.platform_probes`: attacks on the platform (blocking guests, build-time writes, bad names,
  file:// escapes);
- :mod:`.check`: deploys, runs every probe, cleans up.
"""

from tarsctl.demo.security.base import Target
from tarsctl.demo.security.check import SecurityCheck
from tarsctl.demo.security.hostile import HOSTILE_NAME, hostile_model
from tarsctl.demo.security.verdicts import (
    Attempt,
    SecurityReport,
    api_refused,
    blocking_contained,
    build_write_blocked,
    escape_blocked,
    exfiltration_blocked,
    file_read_blocked,
    injection_contained,
    input_rejected,
    memory_blocked,
    neighbour_unaffected,
    security_score,
    socket_blocked,
    stopped_with,
)

__all__ = [
    "HOSTILE_NAME",
    "Attempt",
    "SecurityCheck",
    "SecurityReport",
    "Target",
    "api_refused",
    "blocking_contained",
    "build_write_blocked",
    "escape_blocked",
    "exfiltration_blocked",
    "file_read_blocked",
    "hostile_model",
    "injection_contained",
    "input_rejected",
    "memory_blocked",
    "neighbour_unaffected",
    "security_score",
    "socket_blocked",
    "stopped_with",
]
