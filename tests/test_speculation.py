"""The pure speculation core: latency model, calibration, efficiency model, plans, stop rule, policies, routing."""

from __future__ import annotations

import math
import random

import pytest

from adaspec.speculation.acceptance import (
    RAW,
    AcceptanceCalibrator,
    RequestAcceptance,
    brier_score,
    expected_calibration_error,
)
from adaspec.speculation.draft_budget import DraftBudget, DraftStop
from adaspec.speculation.efficiency import StepShape, expected_tokens, geometric_curve, plan, step_time_ms
from adaspec.speculation.latency_profile import (
    LatencyModel,
    LatencyProfile,
    OnlineLatencyModel,
    Sample,
    prediction_error,
)
from adaspec.speculation.policies import make_policy
from adaspec.speculation.policies.adaspec import AdaSpec
from adaspec.speculation.routing import ReplicaView, predict, rank
from adaspec.speculation.step_state import SLO_MARGIN, RequestState, StepContext, StepLoad

# A machine where a verify forward costs 4 ms + 0.08 ms a token, a draft forward 1.2 ms: speculation pays alone
# and stops paying as the batch grows.
VERIFY = LatencyModel((4.0, 0.05, 0.08, 0.0, 0.02))
DRAFT = LatencyModel((1.2, 0.02, 0.02, 0.0, 0.005))


def context(batch: int = 1, calibrator: AcceptanceCalibrator | None = None, **load) -> StepContext:
    return StepContext(StepLoad(batch=batch, context=200, **load), VERIFY, DRAFT, calibrator or AcceptanceCalibrator(), 8)


def request(**fields) -> RequestState:
    base = dict(context_tokens=200, output_tokens=10, remaining_tokens=100, greedy=True)
    return RequestState(**{**base, **fields})


def with_acceptance(rate: float, tokens: int = 200) -> RequestState:
    r = request()
    accepted = round(rate * tokens)
    r.acceptance.accepted, r.acceptance.tested, r.acceptance.expected = accepted, tokens, 0.7 * tokens
    return r


# ---- latency model ------------------------------------------------------------------------------------------

def test_the_fit_recovers_a_linear_machine_and_predicts_held_out_shapes():
    rng = random.Random(0)
    shapes = [(b, b * q, c) for b in (1, 2, 4, 8, 16, 32) for q in (1, 3, 5, 9) for c in (32, 256, 1024)]
    samples = [Sample.forward(b, n, c, VERIFY.predict(b, n, c) * rng.uniform(0.97, 1.03)) for b, n, c in shapes]
    held_out, train = samples[::5], [s for i, s in enumerate(samples) if i % 5]
    model = LatencyModel.fit(train)
    assert all(c >= 0 for c in model.coef)
    assert model.coef[0] == pytest.approx(VERIFY.coef[0], rel=0.15)  # the per-forward cost, apart from the rest
    median, p90 = prediction_error(model, held_out)
    assert median < 3 and p90 < 5


def test_the_fit_never_gives_negative_coefficients():
    """A machine flat in the batch (all the cost per forward): no negative per-sequence cost fitted in."""
    samples = [Sample.forward(b, b, 100, 10.0 + 0.001 * b) for b in (1, 2, 4, 8, 16)]
    assert all(c >= 0 for c in LatencyModel.fit(samples).coef)


def test_the_online_model_follows_a_machine_that_slowed_down():
    profiled = [Sample.forward(b, b * 2, 128, VERIFY.predict(b, b * 2, 128)) for b in (1, 2, 4, 8, 16, 32)]
    online = OnlineLatencyModel(profiled, refit_every=16)
    assert online.model.predict(8, 16, 128) == pytest.approx(VERIFY.predict(8, 16, 128), rel=0.01)
    for i in range(64):  # the machine now runs 1.5x slower (another tenant)
        b = 4 + i % 5
        online.observe(Sample.forward(b, b * 2, 128, 1.5 * VERIFY.predict(b, b * 2, 128)))
    assert online.model.predict(6, 12, 128) == pytest.approx(1.5 * VERIFY.predict(6, 12, 128), rel=0.1)


def test_a_profile_round_trips_through_its_file(tmp_path):
    samples = [Sample.forward(b, b, 64, VERIFY.predict(b, b, 64)) for b in (1, 4, 16)]
    profile = LatencyProfile.from_samples(samples, samples, {"device": "cpu"})
    profile.save(tmp_path / "p.json")
    loaded = LatencyProfile.load(tmp_path / "p.json")
    assert loaded.verify.coef == pytest.approx(profile.verify.coef) and loaded.verify_samples == samples
    assert loaded.meta == {"device": "cpu"}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an AdaSpec latency profile"):
        LatencyProfile.load(tmp_path / "bad.json")


# ---- acceptance --------------------------------------------------------------------------------------------

def synthetic_steps(rng: random.Random, n: int, truth, k: int = 4):
    """Steps of k drafts whose j-th is accepted with probability truth(c) given its predecessors were."""
    for _ in range(n):
        confidences = [rng.random() for _ in range(k)]
        accepted = 0
        while accepted < k and rng.random() < truth(confidences[accepted]):
            accepted += 1
        yield confidences, accepted


def test_calibration_converges_on_a_synthetic_stream_and_beats_raw_confidence():
    truth = lambda c: 0.2 + 0.7 * c ** 2  # noqa: E731 - the draft is overconfident in the middle, under at 0
    rng = random.Random(1)
    calibrator = AcceptanceCalibrator(decay=1.0)
    for confidences, accepted in synthetic_steps(rng, 4000, truth):
        calibrator.observe(confidences, accepted, greedy=True)
    curve = calibrator.curve(greedy=True)
    for c in (0.15, 0.35, 0.55, 0.75, 0.95):
        assert curve(c) == pytest.approx(truth(c), abs=0.05)
    held_out = [(c, j < a) for cs, a in synthetic_steps(rng, 2000, truth) for j, c in enumerate(cs[: a + 1])]
    outcomes = [o for _, o in held_out]
    calibrated, raw = [curve(c) for c, _ in held_out], [RAW(c) for c, _ in held_out]
    assert expected_calibration_error(calibrated, outcomes) < 0.03 < expected_calibration_error(raw, outcomes)
    assert brier_score(calibrated, outcomes) < brier_score(raw, outcomes)


def test_greedy_and_sampled_are_calibrated_apart_and_shared_counts_merge():
    rng = random.Random(2)
    calibrator = AcceptanceCalibrator(decay=1.0)
    for confidences, accepted in synthetic_steps(rng, 1500, lambda c: 0.9):
        calibrator.observe(confidences, accepted, greedy=True)
    for confidences, accepted in synthetic_steps(rng, 1500, lambda c: 0.3):
        calibrator.observe(confidences, accepted, greedy=False)
    assert calibrator.mean_acceptance(greedy=True) == pytest.approx(0.9, abs=0.03)
    assert calibrator.mean_acceptance(greedy=False) == pytest.approx(0.3, abs=0.03)
    merged = AcceptanceCalibrator.from_lists([calibrator.to_list(), calibrator.to_list(), [1.0, 2.0]])
    assert merged.mean_acceptance(greedy=True) == pytest.approx(calibrator.mean_acceptance(greedy=True), abs=0.01)
    assert sum(merged.counts["greedy"].tested) == pytest.approx(2 * sum(calibrator.counts["greedy"].tested))


def test_a_request_easier_than_the_average_is_seen_as_such():
    curve = AcceptanceCalibrator().curve(greedy=True)
    easy, hard = RequestAcceptance(), RequestAcceptance()
    rng = random.Random(3)
    for confidences, accepted in synthetic_steps(rng, 30, lambda c: 0.95):
        easy.observe(confidences, accepted, curve)
    for confidences, accepted in synthetic_steps(rng, 30, lambda c: 0.2):
        hard.observe(confidences, accepted, curve)
    assert easy.odds_ratio() > 1 > hard.odds_ratio()
    assert easy.curve(curve)(0.5) > curve(0.5) > hard.curve(curve)(0.5)
    assert easy.rate(0.6) > 0.85 and hard.rate(0.6) < 0.35


# ---- efficiency model ---------------------------------------------------------------------------------------

def test_expected_tokens_and_step_time_follow_the_formulas():
    assert expected_tokens([0.8, 0.5]) == pytest.approx(1 + 0.8 + 0.4)
    ctx = context(batch=2)
    t = VERIFY.predict(2, 3 + 2, 200) + DRAFT.predict(2, 2, 200) + DRAFT.predict(1, 1, 200)
    assert step_time_ms(ctx, [2, 1]) == pytest.approx(t)
    assert step_time_ms(ctx, [0, 0]) == pytest.approx(VERIFY.predict(2, 2, 200))  # no draft forward at all


def test_k_falls_as_load_rises():
    ks = []
    for batch in (1, 4, 16, 64):
        p = AdaSpec().plan([request() for _ in range(batch)], context(batch))
        ks.append(max(p.ks))
    assert ks == sorted(ks, reverse=True) and ks[0] >= 2 and ks[-1] == 0, ks


def test_requests_with_different_acceptance_get_different_k_in_one_step():
    p = AdaSpec().plan([with_acceptance(0.95), with_acceptance(0.3), with_acceptance(0.7)], context(3))
    assert p.ks[0] >= p.ks[2] >= p.ks[1] and p.ks[0] > p.ks[1], p.ks


def test_a_request_behind_its_slo_gets_more_drafts_when_verification_is_compute_bound():
    """Each verified token costs 0.4 ms: only the requests behind their SLO (20 ms a token against 10) are worth
    drafts; those comfortably ahead (20 against 200) go without."""
    behind = [request(tpot_slo_s=0.010, since_first_token_s=0.2, output_tokens=11) for _ in range(8)]
    ahead = [request(tpot_slo_s=0.200, since_first_token_s=0.2, output_tokens=11) for _ in range(8)]
    for r in behind + ahead:
        r.acceptance.accepted, r.acceptance.tested, r.acceptance.expected = 70, 100, 70
    compute_bound = StepContext(StepLoad(batch=16, context=200), LatencyModel((4.0, 0.05, 0.4, 0.0, 0.02)), DRAFT,
                                AcceptanceCalibrator(), 8)
    p = AdaSpec().plan(behind + ahead, compute_bound)
    assert behind[0].pace() > 1 > ahead[0].pace()
    assert min(p.ks[:8]) >= 1 and max(p.ks[8:]) == 0, p.ks


def test_a_k_that_would_break_a_requests_slo_is_not_chosen():
    """Alone, an easy request would draft several tokens; sharing the step with one whose SLO leaves 5.5 ms per
    token, it drafts only as far as that SLO allows, and its cap stops it there on live confidence too."""
    easy = with_acceptance(0.95)
    alone = AdaSpec().plan([easy], context(1))
    tight = request(tpot_slo_s=0.0055, since_first_token_s=0.0, output_tokens=1, remaining_tokens=50)
    shared = AdaSpec().plan([easy, tight], context(2))
    assert alone.ks[0] >= 3
    # the tight request's allowed time per token, within the margin the plans keep
    assert shared.step_ms <= SLO_MARGIN * 5.5 * (1 + (shared.ks[1] and 0.9))
    assert step_time_ms(context(2), [shared.caps[0], shared.ks[1]]) <= tight.allowed_token_ms(SLO_MARGIN) * (
        1 + sum(geometric_curve(0.7, shared.ks[1])))  # nor does drafting on live confidence up to the cap
    assert shared.ks[0] < alone.ks[0]


def test_the_allowed_time_per_token_keeps_the_margin_and_a_lost_cause_sets_none():
    """20 tokens out in 380 ms (20 ms a token) of 40 at 25 ms: the SLO leaves (25·39 − 380) / 20 = 29.75 ms a token,
    the margin (0.85·25·39 − 380) / 20 = 22.44; a request already behind the margin's pace gets 0 (it weighs
    more in a plan instead), and one that can no longer meet its SLO at all sets no bound."""
    r = request(tpot_slo_s=0.025, since_first_token_s=0.380, output_tokens=20, remaining_tokens=20)
    assert r.allowed_token_ms() == pytest.approx(29.75)
    assert r.allowed_token_ms(SLO_MARGIN) == pytest.approx((SLO_MARGIN * 25 * 39 - 380) / 20)
    behind = request(tpot_slo_s=0.025, since_first_token_s=0.900, output_tokens=20, remaining_tokens=20)
    assert behind.allowed_token_ms(SLO_MARGIN) == 0.0 and behind.allowed_token_ms() == pytest.approx(3.75)
    lost = request(tpot_slo_s=0.025, since_first_token_s=1.0, output_tokens=20, remaining_tokens=20)
    assert math.isinf(lost.allowed_token_ms()) and math.isinf(lost.allowed_token_ms(SLO_MARGIN))


def test_the_slo_checks_time_a_drafting_step_at_the_tail_of_its_cost_and_the_goodput_at_its_mean():
    """Drafting's fixed cost is 1 ms on average and 30 ms one step in ten: a request whose SLO leaves 6.8 ms a token
    drafts on the mean's account, but not where one step at the tail would break its SLO; one without an SLO drafts
    alike whatever the tail, and so does the tight one where the tail is known to be no worse than the mean."""
    def ks(tail_ms: float, **slo) -> list[int]:
        r = with_acceptance(0.95)
        if slo:
            r.tpot_slo_s, r.since_first_token_s, r.output_tokens, r.remaining_tokens = 0.008, 0.0, 1, 50
        ctx = context(1, draft_overhead_ms=1.0, draft_overhead_tail_ms=tail_ms)
        return AdaSpec().plan([r], ctx).ks

    assert ks(0.0, slo=True)[0] >= 2 and ks(1.0, slo=True)[0] >= 2
    assert ks(30.0, slo=True) == [0]
    assert ks(30.0) == ks(1.0) and ks(1.0)[0] >= 2


def test_a_prompt_waiting_for_its_first_token_caps_the_step():
    free = AdaSpec().plan([with_acceptance(0.95)], context(1))
    capped = AdaSpec().plan([with_acceptance(0.95)], context(1, step_cap_ms=VERIFY.predict(1, 2, 200) + 1.5))
    assert capped.step_ms <= VERIFY.predict(1, 2, 200) + 1.5 and capped.ks[0] < free.ks[0]


def test_each_cap_is_the_most_drafts_before_the_step_outgrows_another_requests_slo():
    """The caps, computed in time linear in the batch (a coordinator plans a replica's whole batch every step),
    are those of the definition: request i alone raised draft by draft, the others keeping their plan, until the
    step would exceed the step cap or the pace of another request that keeps its pace now; never past the
    deepest planned depth unless alone."""
    rng = random.Random(7)
    for trial in range(200):
        n = rng.choice([1, 2, 3, 8, 48])
        ctx = context(batch=n + rng.randint(0, 2), draft_batch=rng.randint(0, 2), overhead_ms=rng.uniform(0, 3),
                      draft_overhead_ms=rng.uniform(0, 1), step_cap_ms=rng.choice([math.inf, rng.uniform(8, 30)]))
        plain_ms = step_time_ms(ctx, [0] * n)  # SLOs near the step's time per token, where the caps bind
        curves = [geometric_curve(rng.uniform(0.5, 0.95), 8) for _ in range(n)]
        allowed = [rng.choice([math.inf, plain_ms * rng.uniform(0.6, 1.0)]) for _ in range(n)]
        caps = [rng.randint(0, 8) for _ in range(n)]
        p = plan(ctx, curves, [rng.uniform(0.5, 2.0) for _ in range(n)], allowed, caps)
        expected = [1.0 + sum(curves[m][:k]) for m, k in enumerate(p.ks)]
        for i in range(n):
            limit = min([ctx.load.step_cap_ms] + [allowed[m] * expected[m] for m in range(n)
                                                  if m != i and p.step_ms / expected[m] <= allowed[m]])
            k = p.ks[i]
            while k < caps[i] and step_time_ms(ctx, p.ks[:i] + [k + 1] + p.ks[i + 1:]) <= limit:
                k += 1
            alone = n == 1 and ctx.load.batch == 1  # may draft past the planned depth on live confidence
            assert p.caps[i] == min(k, max(p.ks)) or (alone and p.caps[i] == k), (trial, i)


def test_at_a_gpus_batch_sizes_the_plan_keeps_every_pace_kept_and_drafts_for_many():
    """The SLO checks, kept as bounds over the requests that draft and those that do not so that each size of a
    depth is checked in O(1) (the plan runs on the coordinator's event loop for batches of hundreds), keep their
    definition: a request keeping its pace in the plain step keeps it in the planned step at the tail of drafting's
    cost, taking its own drafts into account, and the step stays within the step cap. And they veto only some: most
    plans draft, and some requests that keep their pace draft."""
    rng = random.Random(11)
    # a GPU's verify forward: its fixed cost dominates, so speculation still pays at these batch sizes
    verify, draft = LatencyModel((15.0, 0.01, 0.01, 0.0, 0.002)), LatencyModel((2.0, 0.005, 0.005, 0.0, 0.0))
    drafting = paced_drafting = 0
    for trial in range(60):
        n = rng.choice([64, 128, 200])
        draft_overhead, tail = rng.uniform(0, 3), rng.uniform(0, 6)
        ctx = StepContext(StepLoad(batch=n, context=500, draft_overhead_ms=draft_overhead,
                                   draft_overhead_tail_ms=draft_overhead + tail,
                                   step_cap_ms=rng.choice([math.inf, 60.0]), split_phases=rng.random() < 0.5),
                          verify, draft, AcceptanceCalibrator(), 8)
        plain_ms = step_time_ms(ctx, [0] * n)
        curves = [geometric_curve(rng.uniform(0.5, 0.95), 8) for _ in range(n)]
        allowed = [rng.choice([math.inf, 0.0, plain_ms * rng.uniform(0.8, 3.0)]) for _ in range(n)]
        p = plan(ctx, curves, [rng.uniform(0.5, 2.0) for _ in range(n)], allowed, [8] * n)
        if not any(p.ks):
            continue
        drafting += 1
        assert p.step_ms + tail <= ctx.load.step_cap_ms
        for m in range(n):
            e = 1.0 + sum(curves[m][:p.ks[m]])
            if plain_ms <= allowed[m]:
                assert (p.step_ms + tail) / e <= allowed[m] * (1 + 1e-9), (trial, m)
                paced_drafting += p.ks[m] > 0
    assert drafting >= 30 and paced_drafting >= 100

# ---- the drafter's stop rule ----------------------------------------------------------------------------------

def test_the_stop_rule_drafts_while_the_next_token_is_expected_to_clear_the_threshold():
    stop = DraftStop(DraftBudget(8, min_accept_prob=0.5, curve=RAW))
    for c in (0.95, 0.9, 0.85):
        assert stop.going
        stop.add(c)
    assert stop.going  # P = 0.95 * 0.9 * 0.85 = 0.73; the next at 0.85 expected: 0.62 >= 0.5
    stop.add(0.4)  # P = 0.29 below: stop after this one (it is sent: dropping it would bias sampling)
    assert not stop.going and stop.drafted == 4
    capped = DraftStop(DraftBudget(2))
    capped.add(0.1)
    assert capped.going
    capped.add(0.1)
    assert not capped.going
    threshold = DraftStop(DraftBudget(8, min_confidence=0.5))
    threshold.add(0.6)
    assert threshold.going
    threshold.add(0.4)
    assert not threshold.going


# ---- policies ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, error", [("fixed:9", "fixed:K"), ("fixed:x", "fixed:K"), ("threshold:2", "threshold:C"),
                                         ("warp", "unknown policy"), ("adaspec:3", "unknown policy")])
def test_bad_policy_strings_are_refused_naming_the_forms(spec, error):
    with pytest.raises(ValueError, match=error):
        make_policy(spec, 8)


def test_hf_heuristic_grows_after_full_acceptance_and_shrinks_otherwise():
    policy, ctx, r = make_policy("hf-heuristic", 8), context(), request()
    assert policy.budgets([r], ctx)[0].max_tokens == 8  # HF starts at 20, within max_spec_len
    policy.observe([r], ctx, [8], [3])
    policy.observe([r], ctx, [7], [2])
    assert policy.budgets([r], ctx)[0].max_tokens == 6
    policy.observe([r], ctx, [6], [6])
    assert policy.budgets([r], ctx)[0].max_tokens == 8
    for _ in range(10):
        policy.observe([r], ctx, [1], [0])
    assert policy.budgets([r], ctx)[0].max_tokens == 1  # never below 1


def test_ema_moves_between_tiers_per_batch_bucket():
    policy = make_policy("ema", 8)
    small, large = context(1), context(32)
    rs = [request()]
    assert policy.budgets(rs, small)[0].max_tokens == 8
    for _ in range(20):
        policy.observe(rs, small, [8], [1])
    assert policy.budgets(rs, small)[0].max_tokens == 2  # about one accepted: the tier above it
    assert policy.budgets(rs, large)[0].max_tokens == 8  # another bucket, not yet observed


def test_uniform_baselines_give_the_batch_one_k_that_falls_with_the_batch():
    for spec in ("batch-schedule", "goodput"):
        policy = make_policy(spec, 8)
        ks = []
        for batch in (1, 8, 64):
            budgets = policy.budgets([request() for _ in range(batch)], context(batch))
            assert len({b.max_tokens for b in budgets}) == 1
            ks.append(budgets[0].max_tokens)
        assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1], (spec, ks)


def test_the_paper_rule_is_batch_uniform_and_carries_the_step_model():
    budgets = make_policy("adaspec-paper", 8).budgets([request(), request()], context(2))
    rule = budgets[0].batch_rule
    assert budgets[0] == budgets[1] and budgets[0].max_tokens == 8
    assert rule.token_ms == pytest.approx(VERIFY.per_token_ms(200)) and rule.draft_ms == pytest.approx(
        DRAFT.predict(2, 2, 200))


# ---- routing ------------------------------------------------------------------------------------------------------

def replica(name: str, speed: float, sessions: int) -> ReplicaView:
    return ReplicaView(name, sessions, 64, 0, 2.0, 1.6, 300.0,
                       LatencyModel(tuple(c / speed for c in VERIFY.coef)))


def test_routing_takes_the_replica_that_meets_the_slo_with_the_most_slack():
    fast_busy, slow_idle = replica("fast", 2.0, 8), replica("slow", 0.5, 0)
    cal = AcceptanceCalibrator()
    preds = [predict(r, 100, True, DRAFT, cal, 8, ttft_slo_ms=500, tpot_slo_ms=10) for r in (fast_busy, slow_idle)]
    assert [p.replica_id for p in rank(preds)] == ["fast", "slow"]  # busy but twice as fast: more slack
    tight = [predict(r, 100, True, DRAFT, cal, 8, tpot_slo_ms=1.0) for r in (fast_busy, slow_idle)]
    assert all(p.slack < 0 for p in tight)
    assert rank(tight)[0].replica_id == min(tight, key=lambda p: p.tpot_ms).replica_id  # best effort: fastest
    twins = [predict(replica(n, 1.0, s), 100, True, DRAFT, cal, 8, tpot_slo_ms=1000) for n, s in (("a", 9), ("b", 8))]
    assert rank(twins)[0].replica_id == "b"  # equal slack within the tie margin: the less loaded
    no_slo = [predict(replica(n, sp, s), 100, True, DRAFT, cal, 8) for n, sp, s in (("x", 1.0, 0), ("y", 3.0, 0))]
    assert rank(no_slo)[0].replica_id == "y" and math.isinf(no_slo[0].slack)


def test_a_step_shape_with_one_requests_drafts_changed_is_the_shape_of_the_changed_budgets():
    """`StepShape.with_k` (what the SLO caps and the coordinator's step timing use, linear in the depth) against the
    shape built from the changed budgets over the whole batch, raised and lowered, to 0 and past the deepest."""
    rng = random.Random(3)
    for _ in range(500):
        ks = [rng.randint(0, 8) for _ in range(rng.randint(1, 6))]
        i, new = rng.randrange(len(ks)), rng.randint(0, 8)
        assert StepShape.of(ks).with_k(ks[i], new) == StepShape.of(ks[:i] + [new] + ks[i + 1:]), (ks, i, new)


def test_where_requests_that_draft_nothing_step_apart_a_step_drafts_for_all_of_them_or_none():
    """In the services a request at k = 0 goes ahead of those drafting, in a verify forward of its own: a step where
    some draft costs one more forward than one where all or none do. The plan counts it, and keeps them in step."""
    def plan(rates, **load):
        return AdaSpec().plan([with_acceptance(r) for r in rates], context(len(rates), **load)).ks

    assert plan([0.98, 0.02]) == [7, 0] and plan([0.98, 0.02], split_phases=True) == [7, 1]
    assert plan([0.9, 0.3, 0.02]) == [1, 1, 0] and plan([0.9, 0.3, 0.02], split_phases=True) == [0, 0, 0]


def test_a_step_where_some_but_not_all_draft_is_timed_with_the_split_forward():
    """The coordinator times each step against its planned forwards to learn what drafting costs beyond them: the
    split's forward belongs to the forwards, or the learnt cost of drafting would count it a second time."""
    split, engine = context(2, split_phases=True), context(2)
    assert StepShape.of([2, 0]).ms(split) - StepShape.of([2, 0]).ms(engine) == pytest.approx(VERIFY.coef[0])
    assert StepShape.of([2, 0]).with_k(2, 0).ms(split) == StepShape.of([0, 0]).ms(engine)
    for ks in ([2, 2], [0, 0], [3]):
        assert StepShape.of(ks).ms(context(len(ks), split_phases=True)) == StepShape.of(ks).ms(context(len(ks)))


def test_the_context_a_draft_session_has_not_seen_is_fed_in_the_steps_first_draft_forward():
    """A fresh draft session is fed its prompt at its first draft step, and one that sat out steps at k = 0 the
    tokens committed meanwhile: T counts them in the first draft forward, and the shape keeps them through with_k."""
    ctx = context(2)
    fed = StepShape.of([2, 1], [300, 40])
    assert fed.ms(ctx) - StepShape.of([2, 1]).ms(ctx) == pytest.approx(
        DRAFT.predict(2, 2 + 340, 200) - DRAFT.predict(2, 2, 200))  # the first forward only
    assert StepShape.of([2, 0], [300, 40]).draft_lag_tokens == 300  # a request that does not draft feeds nothing
    assert fed.with_k(1, 0, 40) == StepShape.of([2, 0], [300, 40])
    assert StepShape.of([2, 0], [300, 40]).with_k(0, 3, 40) == StepShape.of([2, 3], [300, 40])


def test_a_fresh_draft_sessions_prompt_is_charged_over_the_steps_it_serves_and_within_the_slos_whole():
    """Feeding a 2000-token prompt to the draft costs 40 ms here, once. A request with 300 tokens to go drafts (the
    cost spread over its steps is little, and the step's fixed cost drafts go on paying for at least as deep); one
    with 3 tokens left does not; and a step whose SLO cap leaves no room for those 40 ms does not draft, however
    long the request."""
    def plan(lag, left, **load):
        r = with_acceptance(0.9)
        r.draft_lag_tokens, r.remaining_tokens = lag, left
        return AdaSpec().plan([r], context(1, **load))

    assert plan(2000, 300).ks[0] >= plan(0, 300).ks[0] >= 2
    fed = plan(2000, 300)
    assert fed.step_ms == pytest.approx(StepShape.of(fed.ks, [2000]).ms(context(1)))  # the step: all of it
    assert fed.step_ms - step_time_ms(context(1), fed.ks) == pytest.approx(
        DRAFT.predict(1, 2001, 200) - DRAFT.predict(1, 1, 200))
    assert plan(0, 4).ks[0] >= 2 and plan(2000, 4).ks[0] == 0
    cap = plan(0, 300).step_ms + 5.0
    assert plan(0, 300, step_cap_ms=cap).ks[0] >= 2 and plan(2000, 300, step_cap_ms=cap).ks[0] == 0


def test_a_request_behind_its_slo_does_not_draft_where_its_own_drafts_make_it_slower():
    """A request already behind the margin's pace (a plain step takes longer than the 3.4 ms a token its SLO leaves)
    weighs more and is never a veto on the others' drafts; but its own drafts over a fresh 2000-token prompt, charged
    spread in G, would make this step 40 ms longer and its token slower still: it does not draft until its draft
    session has little left to see; one without an SLO does."""
    def ks(lag: int, **slo) -> list[int]:
        r = with_acceptance(0.9)
        r.draft_lag_tokens, r.remaining_tokens = lag, 300
        if slo:
            r.tpot_slo_s, r.since_first_token_s, r.output_tokens = 0.004, 0.0, 1
        return AdaSpec().plan([r], context(1)).ks

    behind = with_acceptance(0.9)
    behind.tpot_slo_s, behind.since_first_token_s, behind.output_tokens, behind.remaining_tokens = 0.004, 0.0, 1, 300
    assert behind.allowed_token_ms(SLO_MARGIN) < step_time_ms(context(1), [0])
    assert ks(2000)[0] >= 2 and ks(2000, slo=True) == [0]
    assert ks(0, slo=True)[0] >= 2


def test_drafting_starts_where_the_depths_together_pay_its_fixed_costs_though_the_first_alone_does_not():
    """Every step that drafts pays a draft overhead once (here 4 ms, as a hop to a draft replica would): one draft
    alone does not pay for it, four do. Opening the first depth only if it pays alone would never draft; and
    the switch margin applies to the whole plan, not to its first depth."""
    ctx = context(1, draft_overhead_ms=4.0)
    curves, one, four = [geometric_curve(0.9, 8)], [1], [4]
    plain_goodput = 1.0 / step_time_ms(ctx, [0])
    assert (1 + 0.9) / step_time_ms(ctx, one) < plain_goodput * 1.05 < expected_tokens([0.9] * 4) / step_time_ms(
        ctx, four)
    for margin in (0.0, 0.05, -0.05):
        p = plan(ctx, curves, [1.0], [math.inf], [8], switch_margin=margin)
        assert p.ks[0] >= 2 and p.goodput > plain_goodput * (1 + margin), (margin, p)
    # where no depth pays for it, none opens
    assert plan(context(1, draft_overhead_ms=80.0), curves, [1.0], [math.inf], [8], switch_margin=0.05).ks == [0]
