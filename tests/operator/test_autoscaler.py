"""The decider replayed over load traces; each asserts the replica sequence it produces."""

from __future__ import annotations

from itertools import pairwise

from tars_api.lease import ModelState
from tars_operator.autoscaler import History, Policy, decide, model_load

POLICY = Policy(
    target=10,
    min_replicas=0,
    max_replicas=20,
    stable_window_s=60,
    panic_window_s=6,
    panic_threshold=2.0,
    scale_to_zero=True,
    grace_s=30,
)


def replay(trace: list[float], start: int, policy: Policy = POLICY, every: float = 2.0) -> list[int]:
    """Feeds one load sample every ``every`` seconds and applies each decision, as the operator does."""
    history, current, out = History(), start, []
    for step, load in enumerate(trace):
        now = step * every
        history.add(now, load, keep_s=policy.stable_window_s)
        current = decide(history, now, current, policy).desired
        out.append(current)
    return out


def test_steady_load_holds_the_replica_count() -> None:
    assert replay([30.0] * 40, start=3) == [3] * 40


def test_step_up_enters_panic_and_scales_within_the_panic_window() -> None:
    seq = replay([10.0] * 30 + [100.0] * 10, start=1)
    assert seq[:30] == [1] * 30
    # 100 in flight against 1 replica x target 10 is 1000 %: panic, and the panic window average
    # reaches the full 10 replicas within three samples (6 s).
    assert seq[30] > 1
    assert seq[33] == 10
    assert all(b >= a for a, b in pairwise(seq[30:])), "panic never scales down"


def test_spike_does_not_scale_down_until_panic_ends() -> None:
    trace = [10.0] * 5 + [80.0] * 3 + [10.0] * 40
    seq = replay(trace, start=1)
    peak = max(seq)
    assert peak >= 4
    after_spike = seq[8 : 8 + 25]  # within the 60 s panic hold
    assert all(r == peak for r in after_spike)
    assert seq[-1] < peak


def test_decay_scales_down_at_most_by_half_per_decision() -> None:
    seq = replay(
        [200.0] * 30 + [0.0] * 60,
        start=20,
        policy=Policy(**{**POLICY.__dict__, "scale_to_zero": False, "min_replicas": 1}),
    )
    downs = [(a, b) for a, b in pairwise(seq) if b < a]
    assert downs, "it scales down eventually"
    assert all(b >= a // 2 for a, b in downs)
    assert seq[-1] == 1


def test_idle_goes_to_zero_only_after_the_grace_period() -> None:
    seq = replay([5.0] * 5 + [0.0] * 60, start=1)
    zero_at = seq.index(0)
    last_traffic_step = 4
    assert (zero_at - last_traffic_step) * 2.0 >= 30  # grace period respected
    assert seq[zero_at:] == [0] * (len(seq) - zero_at)


def test_without_scale_to_zero_one_replica_stays() -> None:
    policy = Policy(**{**POLICY.__dict__, "scale_to_zero": False, "min_replicas": 0})
    assert replay([0.0] * 60, start=2, policy=policy)[-1] == 1


def test_a_new_model_is_not_scaled_to_zero_before_the_grace_period() -> None:
    seq = replay([0.0] * 30, start=1)
    assert seq[:15] == [1] * 15  # 30 s of grace at one sample every 2 s
    assert seq[-1] == 0


def test_traffic_at_zero_wakes_the_model() -> None:
    seq = replay([0.0] * 40 + [5.0] * 3, start=0)
    assert seq[39] == 0 and seq[40] >= 1


def test_bounds_are_respected() -> None:
    policy = Policy(**{**POLICY.__dict__, "max_replicas": 4, "min_replicas": 2, "scale_to_zero": False})
    seq = replay([1000.0] * 10 + [0.0] * 80, start=2, policy=policy)
    assert max(seq) == 4 and min(seq) == 2


def test_a_tenfold_step_reaches_its_replicas_with_the_first_report_that_shows_it() -> None:
    """Issue 22: panic follows the latest report up, not the panic window's average of reports."""
    policy = Policy(**{**POLICY.__dict__, "target": 1, "min_replicas": 1, "scale_to_zero": False})
    seq = replay([1.0] * 10 + [10.0] * 5, start=1, policy=policy, every=1.0)
    assert seq[:10] == [1] * 10
    assert seq[10] == 10


def test_a_latest_report_below_the_panic_threshold_does_not_panic() -> None:
    history = History()
    for step, load in enumerate([30.0] * 10 + [55.0]):
        history.add(step * 2.0, load, keep_s=POLICY.stable_window_s)
    decision = decide(history, 20.0, 3, POLICY)  # 55 against 3 x 10 is 183 %, under 200 %
    assert decision.mode == "stable"
    assert decision.desired == 4  # the stable average (32.3) moved, not a burst


def test_text_generation_scales_on_tokens_not_requests() -> None:
    """Two requests in flight, but 4,000 tokens asked for: with metric tokens and 500 tokens per
    replica the decider wants 8 replicas; on concurrency the same report wants one."""
    report = ModelState(loaded=True, in_flight=2.0, rps=1.0, tokens=4000.0)
    on_tokens = Policy(**{**POLICY.__dict__, "target": 500})
    history = History()
    history.add(0.0, model_load("tokens", report), keep_s=on_tokens.stable_window_s)
    assert decide(history, 0.0, 1, on_tokens).desired == 8
    history = History()
    history.add(0.0, model_load("concurrency", report), keep_s=POLICY.stable_window_s)
    assert decide(history, 0.0, 1, POLICY).desired == 1
    assert model_load("rps", report) == 1.0
