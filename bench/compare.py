"""Paired comparison of two configurations of one track (``bench compare``, the leaderboard's comparison).

Every method and seed of a track attacks the same test points (``attacked_indices``), so two
configurations compare pairwise: seed s of A against seed s of B, point i against point i.

* With per-point outcomes (:mod:`bench.outcomes`) in every paired row: per seed, McNemar's exact test
  on the points where exactly one of A and B is robust (AutoAttack at the headline ε) or correct
  (clean, on the attacked points): two-sided binomial test of the discordant counts against 1/2.
  Over seeds, a paired bootstrap that resamples the seeds and the points together (the same point
  for A and B, and for every resampled seed) for the difference in accuracy, with its 95 %
  percentile interval.
* Otherwise (rows written before outcomes were recorded): a test over seeds, paired by seed, on
  the rows' accuracies (robust at the headline ε, clean on the whole test split): the mean
  difference, its 95 % t-interval and the exact sign-flip permutation p-value. It says so.

Imports numpy and pandas, never torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: bootstrap resamples and the seed of their generator (fixed: the same rows give the same interval)
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: seeds up to which the sign-flip test enumerates every sign pattern (beyond: that many random ones)
EXACT_FLIPS_MAX_SEEDS = 16
FALLBACK_LABEL = "no per-point outcomes: seed-level test"


# ------------------------------------------------------------------ statistics

def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of ``only_a`` successes in ``only_a + only_b``
    discordant pairs against 1/2 (doubled smaller tail, at most 1; 1 without discordant pairs)."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be >= 0")
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** m)  # exact integers; one rounding in the division


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                     level: float = 0.95) -> tuple[float, float, float]:
    """(observed mean of a - b, low, high): the percentile interval of a bootstrap that resamples the
    rows (seeds) and the columns (points) of the (seeds x points) 0/1 arrays ``a``, ``b`` together.

    A resample draws S seeds and n points with replacement and takes the mean of a - b over the
    S x n cells they pick; the counts of each draw (multinomial weights) make it two matrix products.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired_bootstrap needs non-empty (seeds x points) arrays, got shape {d.shape}")
    s, n = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    chunk = max(1, min(resamples, 2_000_000 // max(n, 1)))  # bounds the (chunk x n) weight matrices
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        w_seed = rng.multinomial(s, np.full(s, 1.0 / s), size=r)
        w_point = rng.multinomial(n, np.full(n, 1.0 / n), size=r)
        stats[start:start + r] = ((w_seed @ d) * w_point).sum(axis=1) / (s * n)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(d.mean()), float(low), float(high)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom: bisection on its CDF,
    integrated with Simpson's rule (scipy is not a dependency)."""
    if df < 1 or not 0.5 < p < 1:
        raise ValueError("t_quantile needs df >= 1 and 0.5 < p < 1")
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, steps: int = 4000) -> float:
        h = x / steps
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def sign_flip_p(diffs, *, seed: int = BOOTSTRAP_SEED) -> tuple[float, int, bool]:
    """Two-sided sign-flip permutation test of mean(diffs) = 0, paired differences (one per seed):
    (p, sign patterns used, exact). Every one of the 2^S patterns when S <= EXACT_FLIPS_MAX_SEEDS,
    else that many random ones; p counts the patterns at least as extreme as the observed one."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign_flip_p needs at least one difference")
    if d.size <= EXACT_FLIPS_MAX_SEEDS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        exact = True
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(2 ** EXACT_FLIPS_MAX_SEEDS, d.size))
        exact = False
    observed = abs(d.mean())
    extreme = np.abs((signs * d).mean(axis=1)) >= observed - 1e-12
    return float(extreme.mean()), len(signs), exact


# ------------------------------------------------------------------ specifications and rows

@dataclass(frozen=True)
class Spec:
    """A configuration as ``NAME[k=v,...]@compression``, resolved against the method's parameters."""

    text: str
    method: str
    method_id: str  # as the rows' method_id column writes it (every parameter, defaults included)
    compression: float | None  # None: whatever single compression the rows have
    name: str = ""  # as people type it (bench.method.short_id); empty: the method_id

    @property
    def label(self) -> str:
        return (self.name or self.method_id) + ("" if self.compression is None else f"@{self.compression:g}")


def parse_spec(text: str) -> Spec:
    """``"robust_lowrank[mode=mean]@0.5"`` -> a :class:`Spec` (a method that does not compress is at 0)."""
    from bench.method import parse_params, params_id, short_id
    from bench.registry import METHODS
    from bench.sweep import parse_methods

    text = str(text).strip()
    head, sep, comp = text.rpartition("@") if "@" in text else (text, "", "")
    compression = None
    if sep:
        try:
            compression = float(comp)
        except ValueError:
            raise ValueError(f"{text!r}: the compression after '@' must be a number, got {comp!r}") from None
        if not 0.0 <= compression < 1.0:
            raise ValueError(f"{text!r}: the compression must be in [0, 1), got {compression:g}")
    specs = parse_methods(head)
    if len(specs) != 1:
        raise ValueError(f"{text!r}: expected one configuration NAME[k=v,...]@compression, got {len(specs)}")
    name, params = specs[0]
    cls = METHODS.get(name)
    parsed = parse_params(cls.Params, params)
    method_id = params_id(name, parsed)
    if not getattr(cls, "compresses", True):
        if compression not in (None, 0.0):
            raise ValueError(f"{text!r}: method {name!r} does not compress; leave out '@' or give @0")
        compression = 0.0
    return Spec(text=text, method=name, method_id=method_id, compression=compression, name=short_id(name, parsed))


def _value(v):
    """None for missing values (None, NaN, pandas NA)."""
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):  # arrays and lists
        pass
    return v


def rows_of(df: pd.DataFrame, spec: Spec, track: str | None = None) -> pd.DataFrame:
    """The successful rows of ``spec`` (on ``track`` when given)."""
    if df is None or df.empty:
        return pd.DataFrame()
    ok = df[(df["status"] == "ok") & (df.get("method_id", df["method"]) == spec.method_id)]
    if track is not None:
        ok = ok[ok["track"] == track]
    if spec.compression is not None:
        comp = pd.to_numeric(ok["compression_target"], errors="coerce")
        ok = ok[np.isclose(comp.astype(float), spec.compression, rtol=0, atol=1e-6)]
    return ok


def _available(df: pd.DataFrame, track: str | None) -> str:
    ok = df[df["status"] == "ok"] if not df.empty else df
    if track is not None and not ok.empty:
        ok = ok[ok["track"] == track]
    if ok.empty:
        return "none"
    pairs = sorted({f"{m}@{c:g}" for m, c in zip(ok["method_id"], ok["compression_target"].astype(float))})
    return ", ".join(pairs)


def _with_objective_text(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``_objective``: each row's objective as ``pgd_at[alpha=0.075,eps=0.3,steps=10]``
    (``standard`` for rows written before objectives existed)."""
    from bench.results import with_objective
    from bench.summary import objective_text

    df = with_objective(df.copy())
    df["_objective"] = [objective_text(r) for r in df[["objective", "objective_params"]].to_dict("records")]
    return df


def _pick_objectives(rows_a: pd.DataFrame, rows_b: pd.DataFrame, a: Spec, b: Spec, track: str,
                     objective: str | None, objective_b: str | None) -> tuple[str, str]:
    """The training objective (full text) of A's and of B's rows (``rows_a``, ``rows_b``: their rows on
    ``track``, with ``_objective``). ``objective`` names A's (and B's unless ``objective_b`` is given) by
    name (``pgd_at``) or full text; without either: ``standard`` when both have such rows, else the one
    objective they share. Rows of different objectives are never mixed."""

    def texts(rows: pd.DataFrame, spec: Spec, want: str | None) -> list[str]:
        if want is None:
            return sorted(set(rows["_objective"]))
        got = sorted(set(rows.loc[(rows["objective"] == want) | (rows["_objective"] == want), "_objective"]))
        if not got:
            raise ValueError(f"no rows of {spec.text} on track {track} trained with {want!r}; its objectives there: "
                             f"{', '.join(sorted(set(rows['_objective']))) or 'none'}")
        if len(got) > 1:
            raise ValueError(f"{spec.text} on track {track} has rows of {', '.join(got)}: name one in full")
        return got

    if objective is None and objective_b is None:
        ta, tb = texts(rows_a, a, None), texts(rows_b, b, None)
        common = sorted(set(ta) & set(tb))
        if "standard" in common:
            return "standard", "standard"
        if len(common) == 1:
            return common[0], common[0]
        if not common:
            raise ValueError(f"{a.text} (trained with {', '.join(ta)}) and {b.text} (trained with {', '.join(tb)}) "
                             f"share no training objective on {track}: compare across objectives with "
                             f"--objective A's --objective-b B's")
        raise ValueError(f"both have rows trained with {', '.join(common)} on {track}: choose one with --objective")
    oa = texts(rows_a, a, objective or "standard")[0]
    return oa, texts(rows_b, b, objective_b or objective or "standard")[0]


def _pick_track(df: pd.DataFrame, a: Spec, b: Spec, track: str | None) -> str:
    if track is not None:
        return track
    ta, tb = set(rows_of(df, a)["track"]), set(rows_of(df, b)["track"])
    both = sorted(ta & tb)
    if len(both) == 1:
        return both[0]
    if not both:
        raise ValueError(f"no track has rows of both {a.text} (tracks: {', '.join(sorted(ta)) or 'none'}) and "
                         f"{b.text} (tracks: {', '.join(sorted(tb)) or 'none'})")
    raise ValueError(f"both configurations have rows on {', '.join(both)}: choose one with --track")


def _per_seed(rows: pd.DataFrame, spec: Spec, track: str) -> dict[int, dict]:
    """seed -> the row to compare (the latest; one with outcomes before one without)."""
    from bench.outcomes import row_outcomes

    if rows.empty:
        raise ValueError(f"no successful rows of {spec.text} on track {track}")
    comps = sorted(set(rows["compression_target"].astype(float)))
    if len(comps) > 1:
        raise ValueError(f"{spec.text} has rows at compressions {', '.join(f'{c:g}' for c in comps)} on {track}: "
                         f"give one as {spec.method}@COMPRESSION")
    out: dict[int, dict] = {}
    recs = sorted(rows.to_dict("records"), key=lambda r: str(r.get("created_at") or ""))
    for r in recs:  # later rows replace earlier ones, unless that would drop outcomes
        r = {k: _value(v) for k, v in r.items()}
        r["_outcomes"] = row_outcomes(r)
        s = int(r["seed"])
        if s not in out or r["_outcomes"] or not out[s]["_outcomes"]:
            out[s] = r
    return out


# ------------------------------------------------------------------ the comparison

@dataclass
class SeedLine:
    seed: int
    acc_a: float | None
    acc_b: float | None
    only_a: int | None = None  # points where only A is robust / correct (per-point comparison)
    only_b: int | None = None
    p: float | None = None  # McNemar's exact p (per-point comparison)

    @property
    def diff(self) -> float | None:
        return None if self.acc_a is None or self.acc_b is None else self.acc_a - self.acc_b


@dataclass
class MetricComparison:
    title: str  # e.g. "robust acc, AutoAttack Linf eps=0.1 (standard)"
    seeds: list[SeedLine]
    diff: float | None  # A - B over seeds (and points)
    low: float | None  # 95% interval of diff
    high: float | None
    interval: str  # how the interval was made
    p: float | None = None  # seed level: the sign-flip p
    p_text: str = ""


@dataclass
class Comparison:
    track: str
    a: Spec
    b: Spec
    seeds: list[int]
    per_point: bool
    n_points: int | None
    notes: list[str] = field(default_factory=list)
    metrics: list[MetricComparison] = field(default_factory=list)
    objective_a: str = "standard"  # the training objective of A's rows, in full (pgd_at[alpha=...,eps=...])
    objective_b: str = "standard"

    def text(self) -> str:
        """What ``bench compare`` prints."""
        if self.objective_a == self.objective_b:
            trained = "" if self.objective_a == "standard" else f"; both trained with {self.objective_a}"
        else:
            trained = f"; A trained with {self.objective_a}, B with {self.objective_b}"
        lines = [f"bench compare on track {self.track}: A = {self.a.label}, B = {self.b.label}{trained}; "
                 f"seeds {', '.join(map(str, self.seeds))} (paired by seed)"]
        if self.per_point:
            lines.append(f"per-point outcomes on the same {self.n_points} attacked points: McNemar's exact test per "
                         f"seed; over seeds a paired bootstrap over points and seeds ({RESAMPLES:,} resamples, "
                         f"generator seed {BOOTSTRAP_SEED})")
        else:
            lines.append(f"{FALLBACK_LABEL} (paired by seed: mean difference, 95% t-interval, exact sign-flip "
                         f"permutation test)")
        lines += [f"  note: {n}" for n in self.notes]
        for m in self.metrics:
            lines += ["", f"{m.title}:"]
            if self.per_point:
                lines.append(f"  {'seed':>4}  {'A':>7}  {'B':>7}  {'A-B':>8}  {'only A':>6}  {'only B':>6}  "
                             f"{'McNemar p':>9}")
                for s in m.seeds:
                    lines.append(f"  {s.seed:>4}  {s.acc_a:7.4f}  {s.acc_b:7.4f}  {s.diff:+8.4f}  {s.only_a:>6}  "
                                 f"{s.only_b:>6}  {_p(s.p):>9}")
            else:
                lines.append(f"  {'seed':>4}  {'A':>7}  {'B':>7}  {'A-B':>8}")
                for s in m.seeds:
                    lines.append(f"  {s.seed:>4}  {_acc(s.acc_a)}  {_acc(s.acc_b)}  "
                                 f"{'-' if s.diff is None else format(s.diff, '+8.4f'):>8}")
            if m.diff is None:
                lines.append("  over seeds: no paired values")
                continue
            ci = ("" if m.low is None else f", 95% {m.interval} [{m.low:+.4f}, {m.high:+.4f}]")
            lines.append(f"  over seeds: A-B {m.diff:+.4f}{ci}" + (f"; {m.p_text}" if m.p_text else ""))
        return "\n".join(lines)


def _p(p: float | None) -> str:
    return "-" if p is None else (f"{p:.3g}" if p >= 0.001 else f"{p:.1e}")


def _acc(v) -> str:
    return f"{v:7.4f}" if v is not None else f"{'-':>7}"


def _same_points(pairs: list[tuple[dict, dict]]) -> str:
    """'' when every paired row attacked the same points, else why not."""
    ref = None
    for ra, rb in pairs:
        for r in (ra, rb):
            idx = r.get("attacked_indices")
            idx = None if idx is None else [int(i) for i in idx]
            if not idx:
                return f"seed {r['seed']} ({r['method_id']}) does not record its attacked_indices"
            if ref is None:
                ref = idx
            elif idx != ref:
                return f"seed {r['seed']} of {r['method_id']} attacked other points than the first paired row"
    return ""


def compare(df: pd.DataFrame, a: str | Spec, b: str | Spec, *, track: str | None = None,
            objective: str | None = None, objective_b: str | None = None,
            resamples: int = RESAMPLES) -> Comparison:
    """Compare configurations ``a`` and ``b`` (specs or ``NAME[k=v]@compression`` strings) on the rows in
    ``df`` (:func:`bench.results.read_results`); see the module docstring. ``objective`` (and
    ``objective_b`` for B when it differs) picks the training objective of the rows compared
    (:func:`_pick_objectives`). A bad spec, a configuration without rows or no common seed is a
    ``ValueError`` that names what exists."""
    from bench.outcomes import mask_at

    a = a if isinstance(a, Spec) else parse_spec(a)
    b = b if isinstance(b, Spec) else parse_spec(b)
    if df is None or df.empty:
        raise ValueError("no result rows to compare")
    if "method_id" not in df.columns:
        df = df.assign(method_id=df["method"])
    track = _pick_track(df, a, b, track)
    all_a, all_b = rows_of(df, a, track), rows_of(df, b, track)
    for spec, rows in ((a, all_a), (b, all_b)):
        if rows.empty:
            raise ValueError(f"no successful rows of {spec.text} (method_id {spec.method_id}) on track {track}; "
                             f"configurations there: {_available(df, track)}")
    all_a, all_b = _with_objective_text(all_a), _with_objective_text(all_b)
    obj_a, obj_b = _pick_objectives(all_a, all_b, a, b, track, objective, objective_b)
    rows_a = _per_seed(all_a[all_a["_objective"] == obj_a], a, track)
    rows_b = _per_seed(all_b[all_b["_objective"] == obj_b], b, track)
    seeds = sorted(set(rows_a) & set(rows_b))
    if not seeds:
        raise ValueError(f"{a.text} (seeds {sorted(rows_a)}) and {b.text} (seeds {sorted(rows_b)}) share no seed")
    pairs = [(rows_a[s], rows_b[s]) for s in seeds]
    notes = []
    left = sorted(set(rows_a) ^ set(rows_b))
    if left:
        notes.append(f"seed(s) {', '.join(map(str, left))} of only one configuration left out")
    eps_a = {r.get("robust_eps") for r, _ in pairs} | {r.get("robust_eps") for _, r in pairs}
    eps_a.discard(None)
    if len(eps_a) > 1:
        raise ValueError(f"the rows report robust accuracy at different ε ({sorted(eps_a)}); they do not compare")
    eps = eps_a.pop() if eps_a else None
    version = next((r.get("aa_headline_version") for r, _ in pairs if r.get("aa_headline_version")), None)
    from bench.columns import eps_text

    robust_title = ("robust acc, AutoAttack Linf eps=" + (eps_text(eps) if eps is not None else "?")
                    + (f" ({version})" if version else ""))

    why = ""
    missing = [f"seed {r['seed']} of {r['method_id']}" for pair in pairs for r in pair if not r["_outcomes"]]
    if missing:
        why = ("rows written before per-point outcomes were recorded" if len(missing) == 2 * len(pairs)
               else "no outcomes in " + ", ".join(missing))
    else:
        why = _same_points(pairs)
        if not why and any(mask_at(r["_outcomes"], "clean") is None for pair in pairs for r in pair):
            why = "a row has outcomes but no clean ones"
    if why:
        notes.insert(0, why)
        return Comparison(track, a, b, seeds, False, None, notes, _seed_level(pairs, robust_title), obj_a, obj_b)

    n = len(pairs[0][0]["attacked_indices"])
    metrics = []
    keys = [(robust_title, ("autoattack", "Linf", eps)), ("clean acc on the attacked points", ("clean", "", 0.0))]
    if eps is None or any(mask_at(r["_outcomes"], "autoattack", "Linf", eps) is None for pair in pairs for r in pair):
        notes.append("robust accuracy is not compared: AutoAttack did not run in every paired row")
        keys = keys[1:]
    for title, key in keys:
        ma = np.stack([mask_at(ra["_outcomes"], *key) for ra, _ in pairs])
        mb = np.stack([mask_at(rb["_outcomes"], *key) for _, rb in pairs])
        lines = []
        for s, xa, xb in zip(seeds, ma, mb):
            only_a, only_b = int((xa & ~xb).sum()), int((xb & ~xa).sum())
            lines.append(SeedLine(s, float(xa.mean()), float(xb.mean()), only_a, only_b, mcnemar_exact(only_a, only_b)))
        diff, low, high = paired_bootstrap(ma, mb, resamples=resamples)
        metrics.append(MetricComparison(title, lines, diff, low, high, "bootstrap interval"))
    return Comparison(track, a, b, seeds, True, n, notes, metrics, obj_a, obj_b)


def _seed_level(pairs: list[tuple[dict, dict]], robust_title: str) -> list[MetricComparison]:
    n_test = {r.get("n_test") for pair in pairs for r in pair} - {None}
    clean_title = "clean acc, whole test split" + (f" (n = {int(next(iter(n_test))):,})" if len(n_test) == 1 else "")
    out = []
    for title, col in ((robust_title, "robust_acc"), (clean_title, "clean_acc")):
        lines = [SeedLine(int(ra["seed"]), _float(ra.get(col)), _float(rb.get(col))) for ra, rb in pairs]
        diffs = [s.diff for s in lines if s.diff is not None]
        if not diffs:
            out.append(MetricComparison(title, lines, None, None, None, ""))
            continue
        d = np.asarray(diffs)
        low = high = None
        if len(d) > 1:
            half = t_quantile(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            low, high = d.mean() - half, d.mean() + half
        p, patterns, exact = sign_flip_p(d)
        p_text = (f"sign-flip permutation test {'exact ' if exact else ''}p = {_p(p)} "
                  f"({patterns:,} sign patterns" + (f"; with {len(d)} seeds no p below {2 / 2 ** len(d):.3g} is "
                                                   f"possible)" if exact else ")"))
        out.append(MetricComparison(title, lines, float(d.mean()), low, high, f"t-interval ({len(d) - 1} df)", p,
                                    p_text))
    return out


def _float(v) -> float | None:
    v = _value(v)
    return None if v is None else float(v)


def spec_of(method_id: str, compression: float) -> Spec:
    """The :class:`Spec` of a configuration as the rows name it (the leaderboard's selection)."""
    name = str(method_id).split("[", 1)[0]
    return Spec(text=f"{method_id}@{compression:g}", method=name, method_id=str(method_id),
                compression=float(compression))


__all__ = ["mcnemar_exact", "paired_bootstrap", "t_quantile", "sign_flip_p", "Spec", "parse_spec", "rows_of",
           "compare", "Comparison", "MetricComparison", "SeedLine", "spec_of", "FALLBACK_LABEL"]
