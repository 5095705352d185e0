"""Extrapolating synthesized resources from reduced MAC arrays to the board's array.

yosys cannot synthesize a board-size core in CI time, so `codesign synth` measures two or three
reduced P x Q arrays and fits, per resource,

    r = a + b*P*Q + c*(P + Q)

(the array's MACs, its row/column operand registers and drain, and the fixed control and AXI
shell) by least squares in exact rational arithmetic, then evaluates it at the board's array.
Terms that the sampled sizes cannot tell apart are dropped, and the fit says which: with two
sizes, or with sizes whose P+Q is an affine function of P*Q (a core whose Q is fixed, like the
current one with Q = 8 lanes), it is r = a + b*P*Q.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

# Term name -> its value at array (P, Q), in the order they enter the model.
TERMS = {"a": lambda p, q: 1, "b*P*Q": lambda p, q: p * q, "c*(P+Q)": lambda p, q: p + q}
FULL = tuple(TERMS)
TWO_TERM = ("a", "b*P*Q")


class FitError(ValueError):
    """The sampled sizes cannot determine even the two-term model."""


@dataclass(frozen=True)
class Fit:
    terms: tuple[str, ...]               # the model's terms, e.g. ("a", "b*P*Q")
    coef: tuple[Fraction, ...]           # one coefficient per term (exact least squares)
    residuals: tuple[Fraction, ...]      # measured - fitted, per sample
    why: str                             # which model and why (dropped terms)

    def at(self, p: int, q: int) -> Fraction:
        return sum((c * TERMS[t](p, q) for t, c in zip(self.terms, self.coef)), Fraction(0))

    def formula(self) -> str:
        parts = [f"{float(c):.6g}" + ("" if t == "a" else "*" + t.split("*", 1)[1])
                 for t, c in zip(self.terms, self.coef)]
        return "r = " + " + ".join(parts)

    def to_json(self) -> dict:
        return {"model": "r = " + " + ".join(self.terms), "coef": dict(zip(self.terms, map(float, self.coef))),
                "max_abs_residual": float(max((abs(r) for r in self.residuals), default=0)),
                "why": self.why}


def choose_terms(shapes: list[tuple[int, int]]) -> tuple[tuple[str, ...], str]:
    """The largest model the sampled shapes determine, and a sentence saying why."""
    distinct = sorted(set(shapes))
    if _determined(distinct, FULL):
        why = f"{len(distinct)} sizes with independent P*Q and P+Q: full model"
        return FULL, why + ("" if len(distinct) > 3 else " (exactly determined: no residual to judge it by)")
    if _determined(distinct, TWO_TERM):
        if len(distinct) == 2:
            return TWO_TERM, "2 sizes: c*(P+Q) dropped (two sizes determine two terms)"
        return TWO_TERM, (f"{len(distinct)} sizes, but P+Q is an affine function of P*Q at them, as with a "
                          "fixed Q: c*(P+Q) dropped, folded into a and b")
    raise FitError(f"sizes {', '.join(f'{p}x{q}' for p, q in distinct)} do not determine a fit: "
                   "give at least two sizes with different P*Q")


def fit(samples: list[tuple[int, int, float]], terms: tuple[str, ...] | None = None) -> Fit:
    """Least-squares fit of (P, Q, measured) samples; terms chosen by choose_terms unless given."""
    shapes = [(p, q) for p, q, _ in samples]
    why = f"terms given: {', '.join(terms)}" if terms else ""
    if terms is None:
        terms, why = choose_terms(shapes)
    rows = _design(shapes, terms)
    ys = [Fraction(y) for _, _, y in samples]
    coef = _solve(_gram(rows), [sum(r[i] * y for r, y in zip(rows, ys)) for i in range(len(terms))])
    if coef is None:
        raise FitError(f"the terms {', '.join(terms)} are not determined by the sampled sizes")
    residuals = tuple(y - sum(c * v for c, v in zip(coef, r)) for r, y in zip(rows, ys))
    return Fit(tuple(terms), tuple(coef), residuals, why)


def _design(shapes: list[tuple[int, int]], terms: tuple[str, ...]) -> list[list[Fraction]]:
    return [[Fraction(TERMS[t](p, q)) for t in terms] for p, q in shapes]


def _gram(rows: list[list[Fraction]]) -> list[list[Fraction]]:
    """A^T A of the design matrix: the normal equations' left side."""
    n = len(rows[0])
    return [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]


def _determined(shapes: list[tuple[int, int]], terms: tuple[str, ...]) -> bool:
    """The terms have full column rank at the shapes (their Gram matrix is non-singular)."""
    return len(shapes) >= len(terms) and _solve(_gram(_design(shapes, terms)), [Fraction(0)] * len(terms)) is not None


def _solve(a: list[list[Fraction]], b: list[Fraction]) -> list[Fraction] | None:
    """Gauss-Jordan elimination in exact arithmetic; None when `a` is singular."""
    n = len(b)
    m = [row[:] + [rhs] for row, rhs in zip(a, b)]
    for col in range(n):
        pivot = next((i for i in range(col, n) if m[i][col] != 0), None)
        if pivot is None:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for i in range(n):
            if i != col and m[i][col] != 0:
                f = m[i][col] / m[col][col]
                m[i] = [x - f * y for x, y in zip(m[i], m[col])]
    return [m[i][n] / m[i][i] for i in range(n)]
