"""Every column a result row can carry, declared once.

A :class:`Column` says what a column is (name, type, unit, description), how it aggregates over a
configuration's seeds, and where it is shown. The run's own columns (identity, training,
provenance) are declared here in :data:`RUN_COLUMNS`; every evaluation column belongs to a
:class:`MetricFamily` (``bench/metrics/families/``, one file per family, or a plugin under the
entry-point group ``bench.metrics``). Everything else derives from these declarations:

* the parquet schema (:func:`bench.results.schema_types`),
* the per-seed means of ``bench show`` and the leaderboard (:func:`aggregated`),
* the columns of ``bench show`` (:func:`shown`), of the leaderboard table and its sort menu
  (:func:`on_board`, :func:`sortable`), and the leaderboard's curve plots (:func:`curve_columns`),
* the summary ``bench run`` prints (:meth:`MetricFamily.summary_lines`),
* the column reference ``docs/columns.md`` (:func:`reference_markdown`; ``bench list --columns``).

This module imports neither torch nor pandas: the leaderboard reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: the types a column may declare (parquet types in :func:`bench.results.schema_types`)
TYPES = ("str", "float", "int", "bool", "list<str>", "list<float>", "list<int>", "curve", "aa_curve", "outcomes")
#: how a column aggregates over a configuration's seeds: "mean" (``<name>_mean`` and ``<name>_std``),
#: "first" (the first successful run's value), "verdict" (a str column of 'ok' or 'suspect: ...': 'ok'
#: when every seed's is, else 'suspect: k of n seeds'), "" (not aggregated)
AGGS = ("mean", "first", "verdict", "")
#: where a column appears besides the parquet file
VIEWS = ("show", "board")


@dataclass(frozen=True)
class Column:
    """One column of a result row.

    ``label`` names it in the leaderboard table, ``short`` in ``bench show`` (default: ``label``,
    then ``name``). ``fmt`` is a format spec for display. An accuracy names in ``points`` the
    column holding the number of points it was measured on: it then gets a 95% Wilson interval,
    ``bench show`` a "<points_label> pts" column, and with ``board_points`` the leaderboard too
    (labelled ``points_label``). ``views`` lists where the column
    is shown ("show": ``bench show``; "board": the leaderboard's table), ``position`` orders shown
    columns across families. ``sort`` ("asc" or "desc", the better direction first) offers it in
    the leaderboard's sort menu under ``sort_label``. A "curve" column (list of {eps, acc}) names
    its attack's ``norm`` ("Linf" or "L2"); the leaderboard plots it.
    """

    name: str
    type: str
    description: str
    unit: str = ""
    agg: str = ""
    label: str = ""
    short: str = ""
    fmt: str = ""
    points: str = ""
    points_label: str = ""
    board_points: bool = False
    views: tuple[str, ...] = ()
    position: float = 100.0
    sort: str = ""
    sort_label: str = ""
    norm: str = ""
    help: str = ""

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"column {self.name!r}: type {self.type!r} is not one of {', '.join(TYPES)}")
        if self.agg not in AGGS:
            raise ValueError(f"column {self.name!r}: agg {self.agg!r} is not one of {AGGS}")
        bad = [v for v in self.views if v not in VIEWS]
        if bad:
            raise ValueError(f"column {self.name!r}: unknown view(s) {bad} (known: {', '.join(VIEWS)})")
        if self.sort not in ("", "asc", "desc"):
            raise ValueError(f"column {self.name!r}: sort must be 'asc', 'desc' or '', got {self.sort!r}")
        if self.type == "curve" and self.norm not in ("Linf", "L2"):
            raise ValueError(f"curve column {self.name!r} must declare norm='Linf' or norm='L2'")
        if self.points and self.agg != "mean":
            raise ValueError(f"column {self.name!r}: an accuracy with points must aggregate as 'mean'")

    @property
    def title(self) -> str:
        """The leaderboard's label."""
        return self.label or self.name

    @property
    def aggregate_key(self) -> str:
        """The column holding its per-configuration value in an aggregated table: ``<name>_mean`` for
        ``agg="mean"``, else the name itself."""
        return f"{self.name}_mean" if self.agg == "mean" else self.name

    @property
    def stem(self) -> str:
        """An accuracy's label without ' acc' ('clean acc' -> 'clean'): names its '± stem' and 'stem 95% CI' cells."""
        return self.title[:-4] if self.title.endswith(" acc") else self.title

    @property
    def terminal(self) -> str:
        """The ``bench show`` label."""
        return self.short or self.label or self.name

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list") or self.type in ("curve", "aa_curve", "outcomes")

    def default(self) -> Any:
        """The value a row holds when nothing was measured: [] for lists, else null."""
        return [] if self.is_list else None

    def display(self, v: Any) -> str:
        """``v`` formatted with ``fmt``; '-' when missing."""
        return fmt(v, self.fmt)


def fmt(v: Any, spec: str = ".4f") -> str:
    """``format(v, spec)``; '-' for None and NaN; ``str(v)`` when the spec does not apply; the spec
    ``"eps"`` writes an attack radius as :func:`eps_text` does (``1/255``, ``0.3``)."""
    if v is None:
        return "-"
    try:
        if v != v:  # NaN
            return "-"
        return eps_text(float(v)) if spec == "eps" else format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def eps_text(eps: float) -> str:
    """RobustBench's way of writing ε: ``"8/255"`` where ε is a multiple of 1/255, else the number."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0 and abs(eps - round(eps, 3)) > 1e-12:
        return f"{round(k)}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class EvalInputs:
    """What a metric family's ``compute`` receives: the trained model (eval mode), the data set,
    the track's :class:`bench.config.EvalProtocol`, the :class:`bench.evaluate.EvalContext`, the
    device, the attacked points ``x_eval, y_eval`` (the test points at ``indices``, chosen by the
    protocol's ``attack_points``: see :func:`bench.evaluate.attacked_indices`; every attack uses them),
    and ``row``: the columns the earlier families (lower ``order``) returned."""

    model: Any
    data: Any
    protocol: Any
    ctx: Any
    device: Any
    x_eval: Any
    y_eval: Any
    indices: tuple[int, ...] | list[int] = ()
    #: the columns of the families that ran before this one (``bench.evaluate`` fills it as they run)
    row: dict = field(default_factory=dict)

    @property
    def n_eval(self) -> int:
        return int(len(self.y_eval))

    @property
    def attacking(self) -> bool:
        """Whether attacks run: not skipped and there are points to attack."""
        return not self.ctx.skip_attacks and self.n_eval > 0


@dataclass(frozen=True)
class MetricFamily:
    """A group of columns computed together. ``compute(inputs) -> {column: value}`` may return any
    subset of its declared ``columns`` (the rest get :meth:`Column.default`); returning an
    undeclared column is an error. ``order`` sets when it runs (attacks after the cheap metrics).
    ``summary(row) -> [lines]`` writes its part of the summary ``bench run`` prints; without it
    the shown scalar columns are printed on one line. Import torch inside ``compute``: the
    leaderboard imports the declarations and must not load torch."""

    name: str
    title: str
    columns: tuple[Column, ...]
    compute: Callable[[EvalInputs], dict]
    order: int = 100
    summary: Callable[[dict], list[str]] | None = None
    description: str = ""

    def __post_init__(self):
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"metric family {self.name!r} declares {', '.join(dup)} more than once")

    def run(self, inputs: EvalInputs) -> dict[str, Any]:
        """``compute`` checked against the declaration, missing columns filled with their defaults."""
        out = self.compute(inputs) or {}
        declared = {c.name for c in self.columns}
        extra = sorted(set(out) - declared)
        if extra:
            raise ValueError(f"metric family {self.name!r} returned undeclared column(s) {', '.join(extra)}; "
                             f"declare them in its columns")
        return {c.name: out.get(c.name, c.default()) for c in self.columns}

    def summary_lines(self, row: dict) -> list[str]:
        if self.summary is not None:
            return list(self.summary(row))
        cells = [f"{c.terminal} {c.display(row.get(c.name))}" for c in self.columns
                 if not c.is_list and row.get(c.name) is not None]
        return [f"  {self.name:<11} " + "   ".join(cells)] if cells else []


# ------------------------------------------------------------------ the run's own columns

def _c(name, type, description, **kw) -> Column:
    return Column(name, type, description, **kw)


#: identity of a run and of its configuration
IDENTITY = (
    _c("run_id", "str", "unique id of this run (12 hex digits); the result file name ends in it"),
    _c("status", "str", "'ok', or 'failed' (then ``error`` and ``traceback`` say why)"),
    _c("error", "str", "the exception of a failed run, one line"),
    _c("traceback", "str", "the full traceback of a failed run"),
    _c("method", "str", "registered method name"),
    _c("method_params", "str", "the method's parameters as sorted JSON ('{}' for defaults-only methods)"),
    _c("method_id", "str", "method name with its non-default parameters, e.g. 'robust_lowrank[mode=mean]'",
       agg="first"),
    _c("objective", "str", "training objective ('standard': clean cross-entropy; 'pgd_at', 'fgsm_rs', 'trades': "
                           "adversarial training, docs/objectives.md); a row without one reads 'standard'"),
    _c("objective_params", "str", "the objective's parameters as sorted JSON, ε and steps resolved ('{}' for standard)"),
    _c("track", "str", "track name (data set, architecture, optimiser, schedule, evaluation protocol)"),
    _c("track_description", "str", "the track's one-line summary at run time"),
    _c("track_differs", "str", "what this track changes relative to the setting it cites ('' when faithful)"),
    _c("dataset", "str", "data set name"),
    _c("arch", "str", "architecture name"),
    _c("seed", "int", "random seed (initialisation, data order, attacks)"),
    _c("compression_target", "float", "requested fraction of parameters removed"),
    _c("config_id", "str", "stable id of the resolved configuration (track, method, parameters, compression, "
                           "seed, budget, evaluation); equal ids are the same experiment"),
    _c("sweep_id", "str", "id of the sweep that ran it (null for a single `bench run`)"),
    _c("parent_run_id", "str", "for `bench eval`: the run whose stored model was re-evaluated"),
)
#: what training produced
TRAINING = (
    _c("device", "str", "torch device the run used ('cpu', 'cuda', ...)"),
    _c("data_source", "str", "where the data set was read from"),
    _c("n_train", "int", "training examples (after the validation hold-out)"),
    _c("n_val", "int", "validation examples held out of the training split"),
    _c("n_params_dense", "int", "parameters of the dense model of the same architecture"),
    _c("n_params", "int", "parameters of the inference form (low-rank layers merged, U·S multiplied once)",
       agg="mean", label="params", fmt=",.0f", views=("board",), position=70, sort="asc", sort_label="parameters",
       help="inference-form parameters"),
    _c("compression", "float", "1 - n_params / n_params_dense", unit="fraction", agg="mean", label="compression",
       fmt=".3f", views=("show", "board"), position=10, sort="desc", help="parameters removed, mean over seeds"),
    _c("budget_epochs", "float", "the epoch budget"),
    _c("budget_seconds", "float", "the wall-time budget (null: epochs only)"),
    _c("epochs", "float", "epochs trained (fractional when the time budget stopped it)"),
    _c("steps", "int", "optimizer steps taken"),
    _c("train_seconds", "float", "training wall time, device-synchronised, evaluation excluded", unit="s",
       agg="mean", label="train s", short="train_s", fmt=".1f", views=("show", "board"), position=80, sort="asc",
       sort_label="train time", help="training wall time (s)"),
    _c("images_per_second", "float", "training throughput", unit="images/s", agg="mean", label="images/s",
       short="img/s", fmt=",.0f", views=("show", "board"), position=90, sort="desc", help="training throughput"),
    _c("stopped_by", "str", "'epochs' or 'seconds': which budget ended training"),
    _c("final_train_loss", "float", "training loss of the last step"),
    _c("resumed_from_step", "int", "the checkpoint step training resumed from (null: trained in one go)"),
    _c("train_forward_passes", "int", "forward passes of the model over a training batch, the training attack's "
                                      "included (steps x the objective's passes per step)"),
    _c("train_backward_passes", "int", "backward passes through the model for a training batch, the training "
                                       "attack's included"),
    _c("train_pgd_curve", "list<float>", "adversarial objectives: PGD accuracy (the training ε, 10 steps) on 256 "
                                         "held-out validation points after each epoch (and at the end of training)",
       unit="fraction"),
    _c("catastrophic_overfitting", "bool", "adversarial objectives: train_pgd_curve fell below 0.3x its best "
                                           "earlier value (Wong et al. 2020); null for standard training"),
    _c("deterministic", "bool", "PyTorch deterministic algorithms were on"),
    _c("method_details", "str", "JSON the method reports about the trained model (ranks, sparsity, ...)"),
    _c("model_path", "str", "stored weights, relative to the results directory"),
    _c("model_sha256", "str", "SHA-256 of the stored weights"),
    _c("eval_seconds", "float", "wall time of the whole evaluation", unit="s"),
)
#: where and with what a run was made (also copied into each file's parquet metadata)
PROVENANCE = (
    _c("created_at", "str", "UTC time the row was written (ISO 8601)"),
    _c("git_commit", "str", "commit of the code that ran (with '+dirty' for uncommitted changes)"),
    _c("python_version", "str", "Python version"),
    _c("torch_version", "str", "PyTorch version"),
    _c("torchvision_version", "str", "torchvision version"),
    _c("pyautoattack_version", "str", "pyautoattack version"),
    _c("device_name", "str", "the CPU or GPU model"),
    _c("hostname", "str", "machine name"),
    _c("config_json", "str", "the full resolved configuration as JSON"),
)
RUN_COLUMNS: tuple[Column, ...] = IDENTITY + TRAINING + PROVENANCE
#: the run columns' groups, for the reference
RUN_GROUPS = (("Identity", IDENTITY), ("Training", TRAINING), ("Provenance", PROVENANCE))


# ------------------------------------------------------------------ families and derived views

def families() -> list[MetricFamily]:
    """Every registered metric family, in evaluation order."""
    from bench.registry import METRIC_FAMILIES

    return sorted((f for _, f in METRIC_FAMILIES.items()), key=lambda f: (f.order, f.name))


def all_columns() -> list[Column]:
    """The run's columns, then every family's, in declaration order. A name declared twice is an error."""
    cols = list(RUN_COLUMNS)
    seen = {c.name: "the run" for c in cols}
    for fam in families():
        for c in fam.columns:
            if c.name in seen:
                raise ValueError(f"column {c.name!r} of metric family {fam.name!r} is already declared by "
                                 f"{seen[c.name]}")
            seen[c.name] = f"metric family {fam.name!r}"
            cols.append(c)
    return cols


def aggregated(agg: str = "mean") -> list[str]:
    """Names of the columns aggregated with ``agg`` over seeds, in declaration order."""
    return [c.name for c in all_columns() if c.agg == agg]


def accuracies() -> dict[str, str]:
    """accuracy column -> the column holding its number of points (for Wilson intervals)."""
    return {c.name: c.points for c in all_columns() if c.points}


def _in_view(view: str) -> list[Column]:
    cols = [c for c in all_columns() if view in c.views]
    return sorted(cols, key=lambda c: c.position)  # stable: declaration order breaks ties


def shown() -> list[Column]:
    """The columns of ``bench show``, in display order."""
    return _in_view("show")


def on_board() -> list[Column]:
    """The columns of the leaderboard's table, in display order."""
    return _in_view("board")


def sortable() -> list[Column]:
    return [c for c in all_columns() if c.sort]


def curve_columns() -> list[Column]:
    """The plain {eps, acc} curve columns (the AutoAttack curve is ``aa_curve``)."""
    return [c for c in all_columns() if c.type == "curve"]


# ------------------------------------------------------------------ the reference

def reference_markdown() -> str:
    """``docs/columns.md``: every column, grouped, with type, unit, aggregation and description."""
    lines = ["# Result columns", "",
             "Generated from the declarations in `bench/columns.py` (the run's columns) and",
             "`bench/metrics/families/` (one file per metric family) by `bench list --columns`;",
             "`tests/test_columns.py` checks this file is current. Types are parquet types; list columns are",
             "empty, never null, when there is nothing to list. `agg`: how `bench show` and the leaderboard",
             "combine a configuration's seeds (`mean`: mean and sample std; `first`: the first run's value;",
             "`verdict`: 'ok' when every seed's is 'ok', else 'suspect: k of n seeds').", ""]

    def table(cols: Iterable[Column]) -> list[str]:
        out = ["| column | type | unit | agg | description |", "|---|---|---|---|---|"]
        for c in cols:
            desc = c.description.replace("|", "\\|")
            if c.points:
                desc += f" 95% Wilson interval over `{c.points}` points in the tables."
            out.append(f"| `{c.name}` | {c.type} | {c.unit} | {c.agg} | {desc} |")
        return out + [""]

    for title, cols in RUN_GROUPS:
        lines += [f"## {title}", ""] + table(cols)
    for fam in families():
        lines += [f"## {fam.title} (metric family `{fam.name}`)", ""]
        if fam.description:
            lines += [fam.description, ""]
        lines += table(fam.columns)
    return "\n".join(lines)


__all__ = ["Column", "fmt", "EvalInputs", "MetricFamily", "RUN_COLUMNS", "families", "all_columns", "aggregated",
           "accuracies", "shown", "on_board", "sortable", "curve_columns", "reference_markdown"]
