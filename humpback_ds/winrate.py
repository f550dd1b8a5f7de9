"""Win-rate arithmetic of a pairwise judge (pure functions, no I/O).

Preferences use alpaca_eval's encoding so that a judgement file can be compared with (or handed to)
`alpaca_eval`: 1 = the reference (B) wins, 2 = the model under test (A) wins, 1.5 = a draw, any
value in between = a soft preference (the judge's probability that A is better, plus 1). 0 is an
old spelling of a draw. `win_rate` reproduces `alpaca_eval.metrics.pairwise_to_winrate` (0.6.6):
the mean of (preference - 1) x 100, its standard error (sample standard deviation / sqrt(n)), and
the discrete win rate where every preference is rounded to a win, a loss or a draw (draws count
half). tests/test_winrate.py pins this against numbers produced by the package itself.

The judge asks its question in both orders (A shown first, then B shown first) to cancel position
bias; `preference_from_margins` combines the two answers in log-odds space, where a constant bias
towards one position cancels exactly, and a file judged against itself scores exactly 50.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

DRAW = 1.5

Verdict = Literal["A", "B", "tie"]


@dataclass(frozen=True)
class WinRate:
    """Head-to-head summary of A (model under test) against B (reference), in percent."""

    win_rate: float
    standard_error: float  # NaN with fewer than two preferences (as alpaca_eval)
    discrete_win_rate: float
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check(preferences: Sequence[float]) -> list[float]:
    """Map 0 -> 1.5, drop NaN (not a preference), refuse anything outside [1, 2]."""
    out = []
    for i, p in enumerate(preferences):
        if isinstance(p, float) and math.isnan(p):
            continue
        p = DRAW if p == 0 else float(p)
        if not 1.0 <= p <= 2.0:
            raise ValueError(
                f"preference #{i} is {p!r}; alpaca_eval preferences lie in [1, 2] "
                "(1: reference wins, 2: model wins, 1.5 or 0: draw)"
            )
        out.append(p)
    return out


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def win_rate(preferences: Sequence[float]) -> WinRate:
    """Win rate of A over B with its standard error; draws count half (alpaca_eval's definition)."""
    prefs = _check(preferences)
    if not prefs:
        raise ValueError("no preferences to compute a win rate from")
    shifted = [p - 1.0 for p in prefs]
    mean, sem = _mean_sem(shifted)
    discrete = [0.5 if p == DRAW else float(round(p) - 1) for p in prefs]
    return WinRate(
        win_rate=mean * 100,
        standard_error=sem * 100,
        discrete_win_rate=math.fsum(discrete) / len(discrete) * 100,
        n_wins=sum(s > 0.5 for s in shifted),
        n_wins_base=sum(s < 0.5 for s in shifted),
        n_draws=sum(p == DRAW for p in prefs),
        n_total=len(prefs),
    )


def swap(preferences: Sequence[float]) -> list[float]:
    """The same judgements seen from B's side: preference p becomes 3 - p (a draw stays a draw)."""
    return [
        p if (isinstance(p, float) and math.isnan(p)) else 3.0 - (DRAW if p == 0 else p)
        for p in preferences
    ]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def first_is_better(logp_1: float, logp_2: float) -> float:
    """P('(1) is better') from the judge's log-probabilities of the continuations '1' and '2',
    normalised over the two."""
    return sigmoid(logp_1 - logp_2)


def preference_from_margins(margin_a_first: float, margin_b_first: float) -> float:
    """P(A is better), both orders combined; the margin of an order is logP('1') - logP('2').

    With A shown first a positive margin favours A; with B shown first it favours B. A judge with a
    position bias b sees margins q + b and -q + b: their half-difference q is free of b. Equal
    margins (e.g. A judged against itself) give exactly 0.5.
    """
    return sigmoid((margin_a_first - margin_b_first) / 2.0)


def preference_from_verdicts(first_a_first: int | None, first_b_first: int | None) -> float:
    """P(A is better) from two hard verdicts (1 or 2 = which output won; None = unparsed).

    Each order gives A a 1, 0, or 0.5 when the verdict could not be read; the two are averaged,
    so orders that disagree make a draw (ties count half).
    """

    def a_wins(verdict: int | None, a_position: int) -> float:
        if verdict is None:
            return 0.5
        return 1.0 if verdict == a_position else 0.0

    return (a_wins(first_a_first, 1) + a_wins(first_b_first, 2)) / 2.0


def verdict(p_a: float) -> Verdict:
    """The hard outcome of a probability that A is better."""
    return "A" if p_a > 0.5 else "B" if p_a < 0.5 else "tie"


def agreement(p_a_first: Sequence[float], p_a_second: Sequence[float]) -> float:
    """Fraction of pairs whose two orders name the same winner (A, B or tie), in [0, 1].

    `p_a_first[i]` is P(A better) read when A was shown first, `p_a_second[i]` when A was second.
    A position-blind judge agrees on every pair; one that always picks (1) agrees on none.
    """
    if len(p_a_first) != len(p_a_second):
        raise ValueError("both orders need the same number of judgements")
    if not p_a_first:
        raise ValueError("no judgements")
    same = sum(verdict(x) == verdict(y) for x, y in zip(p_a_first, p_a_second, strict=True))
    return same / len(p_a_first)


def to_alpaca(p_a: float) -> float:
    """P(A is better) in [0, 1] -> alpaca_eval preference in [1, 2]."""
    if not 0.0 <= p_a <= 1.0:
        raise ValueError(f"probability {p_a!r} outside [0, 1]")
    return 1.0 + p_a
