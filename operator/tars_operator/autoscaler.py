"""The scaling decision, modelled on Knative's KPA, as plain code over a window of load samples.

desired = ceil(load / target), averaged over the stable window (default 60 s). When the load over
the short panic window (default 6 s) reaches panicThreshold percent of what the current replicas
can carry, the decider panics: for one stable window it follows the panic-window load and never
scales down. Scale-down is also rate-limited (at most halving per decision), and a model with
scaleToZero only goes to zero after a grace period without any traffic.

The panic-window load is the higher of the window's average and its latest sample: each sample is
already an agent's average over its last report interval, so averaging samples again would make a
step show at full height only a whole panic window later (a 10x step took 14 s to reach its
replicas). Following the latest sample up is what panic mode is for; it never scales down.

The load is what ``scaling.metric`` names (:func:`model_load`): requests in flight (queued ones
included), requests per second, or tokens that queued and in-flight requests asked to generate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from tars_api.lease import ModelState
from tars_api.meta import parse_duration
from tars_api.tarsmodel import Scaling

MAX_SCALE_DOWN_RATE = 2.0
Mode = Literal["stable", "panic", "idle"]


@dataclass(frozen=True)
class Policy:
    target: float
    min_replicas: int
    max_replicas: int
    stable_window_s: float
    panic_window_s: float
    panic_threshold: float  # a ratio: 2.0 means 200 % of current capacity
    scale_to_zero: bool
    grace_s: float

    @classmethod
    def from_spec(cls, scaling: Scaling) -> Policy:
        return cls(
            target=scaling.target,
            min_replicas=scaling.min_replicas,
            max_replicas=scaling.max_replicas,
            stable_window_s=parse_duration(scaling.stable_window),
            panic_window_s=parse_duration(scaling.panic_window),
            panic_threshold=scaling.panic_threshold / 100.0,
            scale_to_zero=scaling.scale_to_zero,
            grace_s=parse_duration(scaling.scale_to_zero_grace_period),
        )


@dataclass
class History:
    """Load samples (time, load) and what the decider remembers between decisions."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)
    panic_until: float = -math.inf
    last_traffic: float = -math.inf
    panic_peak: int = 0

    def add(self, now: float, load: float, keep_s: float) -> None:
        if not self.samples and self.last_traffic == -math.inf:
            # A model just created (or an operator just started) counts as recently used: the grace
            # period runs from here, so nothing is scaled to zero before it had a chance of traffic.
            self.last_traffic = now
        self.samples.append((now, load))
        if load > 0:
            self.last_traffic = now
        while self.samples and self.samples[0][0] < now - keep_s:
            self.samples.popleft()

    def average(self, now: float, window_s: float) -> float:
        recent = [load for t, load in self.samples if t >= now - window_s]
        return sum(recent) / len(recent) if recent else 0.0

    def latest(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


@dataclass(frozen=True)
class Decision:
    desired: int
    mode: Mode
    stable_load: float
    panic_load: float

    def explain(self, current: int) -> str:
        return (
            f"{current} -> {self.desired} replicas ({self.mode}: load {self.stable_load:.1f} over the stable "
            f"window, {self.panic_load:.1f} over the panic window)"
        )


def decide(history: History, now: float, current: int, policy: Policy) -> Decision:
    """Replicas wanted now. ``history`` must already hold the latest sample; it is updated in place
    with the panic state, which is the only thing that carries over between decisions."""
    stable_load = history.average(now, policy.stable_window_s)
    panic_load = max(history.average(now, policy.panic_window_s), history.latest())
    want_stable = math.ceil(stable_load / policy.target)
    want_panic = math.ceil(panic_load / policy.target)

    capacity = max(current, 1) * policy.target
    if panic_load > 0 and panic_load / capacity >= policy.panic_threshold:
        if now >= history.panic_until:
            history.panic_peak = current
        history.panic_until = now + policy.stable_window_s
    mode: Mode
    if now < history.panic_until:
        mode = "panic"
        history.panic_peak = max(history.panic_peak, want_panic, current)
        desired = history.panic_peak
    else:
        mode = "stable"
        desired = want_stable
        # Scale down gently: at most by MAX_SCALE_DOWN_RATE per decision.
        desired = max(desired, math.floor(current / MAX_SCALE_DOWN_RATE))

    idle = now - history.last_traffic >= policy.grace_s
    floor = policy.min_replicas
    if desired == 0 and floor == 0 and not (policy.scale_to_zero and idle):
        floor = 1  # traffic seen within the grace period (or no scale-to-zero): keep one warm
    if desired == 0 and policy.scale_to_zero and idle:
        mode = "idle"
    desired = min(max(desired, floor), policy.max_replicas)
    return Decision(desired=desired, mode=mode, stable_load=stable_load, panic_load=panic_load)


def model_load(metric: str, state: ModelState) -> float:
    """One agent's report of a model, as the load ``scaling.metric`` names."""
    if metric == "rps":
        return state.rps
    if metric == "tokens":
        return state.tokens
    return state.in_flight
