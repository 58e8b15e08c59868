"""`tarsctl demo` and `tarsctl security-check`: the TARS run, measured end to end (see phases.py)."""
