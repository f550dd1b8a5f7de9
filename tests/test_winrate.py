"""Win-rate arithmetic: equal to alpaca_eval's own, symmetric under swapping A and B."""

from __future__ import annotations

import math

import pytest

from humpback_ds import winrate

NAN = float("nan")

# Reference numbers produced by the alpaca_eval package itself (version 0.6.6, installed in a scratch
# venv: `python3 -m venv /tmp/ae && /tmp/ae/bin/pip install alpaca_eval`; it is NOT a dependency):
#   from alpaca_eval.metrics import pairwise_to_winrate
#   pairwise_to_winrate(preferences)  -> win_rate, standard_error, discrete_win_rate, n_wins, ...
# Encoding: 1 = reference wins, 2 = model wins, 1.5 or 0 = draw, NaN = not a preference (dropped).
ALPACA_EVAL_REFERENCE = [
    # preferences, win_rate, standard_error, discrete_win_rate, n_wins, n_wins_base, n_draws, n_total
    ([2, 1, 1.5, 2, 2], 70.0, 20.0, 70.0, 3, 1, 1, 5),
    (
        [1.9, 1.2, 1.65, 1.5, 1.0, 2.0, 1.33],
        51.142857142857146,
        13.80550023485907,
        50.0,
        3,
        3,
        1,
        7,
    ),
    ([0, 2, 2, 1, NAN, 1.75], 65.0, 18.708286933869704, 70.0, 3, 1, 1, 5),
    ([1.5, 1.5, 1.5], 50.0, 0.0, 50.0, 0, 0, 3, 3),
    ([1.0, 1.0, 2.0, 1.0], 25.0, 25.0, 25.0, 1, 3, 0, 4),
    ([1.3, 1.7], 50.0, 19.999999999999996, 50.0, 1, 1, 0, 2),
]


@pytest.mark.parametrize("prefs,wr,se,dwr,wins,wins_base,draws,total", ALPACA_EVAL_REFERENCE)
def test_win_rate_equals_alpaca_eval(prefs, wr, se, dwr, wins, wins_base, draws, total):
    got = winrate.win_rate(prefs)
    assert got.win_rate == pytest.approx(wr, abs=1e-9)
    assert got.standard_error == pytest.approx(se, abs=1e-9)
    assert got.discrete_win_rate == pytest.approx(dwr, abs=1e-9)
    assert (got.n_wins, got.n_wins_base, got.n_draws, got.n_total) == (
        wins,
        wins_base,
        draws,
        total,
    )


@pytest.mark.parametrize("prefs", [row[0] for row in ALPACA_EVAL_REFERENCE])
def test_swapping_a_and_b_gives_100_minus_win_rate(prefs):
    a, b = winrate.win_rate(prefs), winrate.win_rate(winrate.swap(prefs))
    assert b.win_rate == pytest.approx(100.0 - a.win_rate, abs=1e-9)
    assert b.discrete_win_rate == pytest.approx(100.0 - a.discrete_win_rate, abs=1e-9)
    assert b.standard_error == pytest.approx(a.standard_error, abs=1e-9)
    assert (b.n_wins, b.n_wins_base, b.n_draws) == (a.n_wins_base, a.n_wins, a.n_draws)


def test_single_preference_has_no_standard_error_and_bad_values_are_refused():
    assert math.isnan(winrate.win_rate([2.0]).standard_error)
    with pytest.raises(ValueError, match=r"preference #1 is 2.5"):
        winrate.win_rate([1.0, 2.5])
    with pytest.raises(ValueError, match="no preferences"):
        winrate.win_rate([NAN])


def test_both_orders_cancel_a_constant_position_bias():
    q, bias = (
        0.8,
        3.0,
    )  # true log-odds that A is better; the judge adds `bias` to whatever is shown first
    p = winrate.preference_from_margins(q + bias, -q + bias)
    assert p == pytest.approx(winrate.sigmoid(q), abs=1e-12)
    # Equal margins (A against itself, any bias) are exactly a draw.
    for margin in (-7.3, 0.0, 0.1, 12.0):
        assert winrate.preference_from_margins(margin, margin) == 0.5


def test_first_is_better_normalises_the_two_continuations():
    lp1, lp2 = math.log(0.03), math.log(0.01)
    assert winrate.first_is_better(lp1, lp2) == pytest.approx(0.75, abs=1e-12)
    assert winrate.first_is_better(-1000.0, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_hard_verdicts_count_disagreement_and_unparsed_as_half():
    assert winrate.preference_from_verdicts(1, 2) == 1.0  # A wins in both orders
    assert winrate.preference_from_verdicts(2, 1) == 0.0  # B wins in both orders
    assert winrate.preference_from_verdicts(1, 1) == 0.5  # always "(1)": pure position bias -> draw
    assert winrate.preference_from_verdicts(None, 2) == 0.75


def test_agreement_between_orders():
    # pair 0 both orders say A; pair 1 say A then B; pair 2 both B; pair 3 tie and tie
    first = [0.9, 0.6, 0.2, 0.5]
    second = [0.7, 0.4, 0.1, 0.5]
    assert winrate.agreement(first, second) == 0.75
    assert winrate.to_alpaca(0.25) == 1.25
    with pytest.raises(ValueError):
        winrate.to_alpaca(1.5)
