"""The results store: one parquet file per run, written atomically; a tolerant reader.

Only this module writes result files. A row is a flat dict; list and dict
values become parquet list/struct columns (numbers stay numbers). Run
provenance is also copied into the parquet file's key-value metadata.

Required columns (other parts of the project read them by these names):
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterable

from bench.columns import PROVENANCE as _PROVENANCE

REQUIRED_COLUMNS: tuple[str, ...] = (
    "run_id", "status", "error", "method", "method_params", "track", "dataset", "arch", "seed",
    "compression_target", "compression", "n_params", "n_params_dense", "epochs", "train_seconds",
    "images_per_second", "device", "n_test", "clean_acc", "robust_acc", "robust_eps", "cond_max",
)
#: declared in :data:`bench.columns.PROVENANCE`; also copied into each file's parquet metadata
PROVENANCE_COLUMNS: tuple[str, ...] = tuple(c.name for c in _PROVENANCE)
__doc__ += "\n" + ", ".join(REQUIRED_COLUMNS) + "\n\nProvenance: " + ", ".join(PROVENANCE_COLUMNS) + "\n"
__doc__ += """
Every column's type comes from its declaration (:mod:`bench.columns`, ``docs/columns.md``). Each
file carries all declared columns (null where a run has no value), so the files of one directory
share one schema and also read as a single data set with ``pandas.read_parquet(DIR)``. Columns a
plugin adds without declaring them are inferred.
"""


def resolve_results_dir(arg: str | os.PathLike | None = None, env: dict | None = None) -> Path:
    """The results directory: ``arg``, else ``$BENCH_RESULTS_DIR``, else ``./results``."""
    env = os.environ if env is None else env
    return Path(arg or env.get("BENCH_RESULTS_DIR") or "results")


def _names_of(type_: str) -> tuple[str, ...]:
    from bench.columns import all_columns

    return tuple(c.name for c in all_columns() if c.type == type_)


def float_columns() -> tuple[str, ...]:
    return _names_of("float")


def int_columns() -> tuple[str, ...]:
    return _names_of("int")


def schema_types() -> dict:
    """Column name -> pyarrow type for every declared column."""
    import pyarrow as pa

    from bench.columns import all_columns

    curve = pa.list_(pa.struct([("eps", pa.float64()), ("acc", pa.float64())]))
    aa_curve = pa.list_(pa.struct([
        ("norm", pa.string()), ("eps", pa.float64()), ("acc", pa.float64()), ("version", pa.string()),
        ("attacks", pa.string()), ("n", pa.int64()), ("n_attacked", pa.int64()), ("seconds", pa.float64()),
    ]))
    # per-point outcomes (bench.outcomes): bits is a base64 bitmask over attacked_indices
    outcomes = pa.list_(pa.struct([("attack", pa.string()), ("norm", pa.string()), ("eps", pa.float64()),
                                   ("n", pa.int64()), ("bits", pa.string())]))
    types = {"str": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(),
             "list<str>": pa.list_(pa.string()), "list<float>": pa.list_(pa.float64()),
             "list<int>": pa.list_(pa.int64()), "curve": curve, "aa_curve": aa_curve,
             "outcomes": outcomes}
    return {c.name: types[c.type] for c in all_columns()}


FILE_GLOB = "*.parquet"


class ResultsError(RuntimeError):
    pass


#: columns every result file has carried since the schema ``scripts/migrate_results.py`` converts to;
#: a file without one was written by older code
CURRENT_SCHEMA_COLUMNS: tuple[str, ...] = ("config_id", "objective", "objective_params")


class OutdatedResultsError(ValueError):
    """Result files written by older code, before the current schema: convert them once with
    ``scripts/migrate_results.py``."""

    def __init__(self, results_dir, names: list[str]):
        super().__init__(
            f"{len(names)} result file(s) in {results_dir} were written by an older version of the bench "
            f"(no {' / '.join(CURRENT_SCHEMA_COLUMNS)} column), e.g. {names[0]}; convert them once with "
            f"`python scripts/migrate_results.py {results_dir}` (values are kept)")


def _is_current(column_names) -> bool:
    return set(CURRENT_SCHEMA_COLUMNS) <= set(column_names)


def check_current(results_dir: str | os.PathLike) -> None:
    """Raise :class:`OutdatedResultsError` when a file in ``results_dir`` predates the current schema
    (reads the files' schemas only; unreadable files are :func:`read_results`' to report)."""
    import pyarrow.parquet as pq

    old = []
    for path in result_files(results_dir):
        try:
            names = pq.read_schema(path).names
        except Exception:  # noqa: BLE001 - reported by read_results
            continue
        if not _is_current(names):
            old.append(path.name)
    if old:
        raise OutdatedResultsError(results_dir, old)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def _normalise(row: dict[str, Any]) -> dict[str, Any]:
    out = {c: None for c in REQUIRED_COLUMNS}
    out.update(row)
    missing = [c for c in ("run_id", "status", "method", "track") if not out.get(c)]
    if missing:
        raise ResultsError(f"result row lacks {', '.join(missing)}")
    if out["status"] not in ("ok", "failed"):
        raise ResultsError(f"status must be 'ok' or 'failed', got {out['status']!r}")
    for cols, cast in ((float_columns(), float), (int_columns(), int)):
        for c in cols:
            if out.get(c) is not None:
                try:
                    out[c] = cast(out[c])
                except (TypeError, ValueError):
                    raise ResultsError(f"column {c!r} must be a number, got {out[c]!r}") from None
    for c in ("method_params", "objective_params"):
        if isinstance(out.get(c), dict):
            out[c] = json.dumps(out[c], sort_keys=True)
    return out


def _table(row: dict[str, Any]):
    import pyarrow as pa

    types = schema_types()
    values = {c: None for c in types}
    values.update(row)
    fields, arrays = [], []
    for k, v in values.items():
        typ = types.get(k)
        try:
            arr = pa.array([v], type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            if typ is None:
                raise
            raise ResultsError(f"column {k!r}: {v!r} does not fit its declared type {typ}: {exc}") from exc
        fields.append(pa.field(k, arr.type))
        arrays.append(arr)
    meta = {b"bench.provenance": json.dumps({k: row.get(k) for k in PROVENANCE_COLUMNS}, default=str).encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


class ResultsDirError(ValueError):
    """The results directory cannot take a row (found before a run starts, not after it trained)."""


def check_writable(results_dir: str | os.PathLike, min_free_mb: float = 50.0) -> Path:
    """Create ``results_dir`` if needed and check that a file can be written there and that at
    least ``min_free_mb`` MB are free; raise :class:`ResultsDirError` saying what is wrong, or
    :class:`OutdatedResultsError` when its files predate the current schema (a run reads them)."""
    import shutil

    d = Path(results_dir)
    check_current(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-check-", dir=d)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise ResultsDirError(f"results directory {str(d)!r} is not writable: {exc.strerror or exc}") from exc
    free_mb = shutil.disk_usage(d).free / 2 ** 20
    if free_mb < min_free_mb:
        raise ResultsDirError(f"results directory {str(d)!r}: only {free_mb:.0f} MB free on its disk "
                              f"(at least {min_free_mb:.0f} MB wanted for rows and AutoAttack state)")
    return d


def write_atomically(path: str | os.PathLike, write, *, prefix: str = ".tmp-", suffix: str = "") -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then renamed over it: a reader sees the old
    file or the whole new one, never part of it. The temporary file is removed when ``write`` fails;
    a writer killed midway leaves it behind under ``prefix``/``suffix``, which must not look like the
    final file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_row(row: dict[str, Any], results_dir: str | os.PathLike) -> Path:
    """Write one run's row to ``<results_dir>/<track>__<method>__<run_id>.parquet`` atomically."""
    import pyarrow.parquet as pq

    row = _normalise(row)
    name = f"{_safe(row['track'])}__{_safe(row['method'])}__{_safe(row['run_id'])}.parquet"
    table = _table(row)
    return write_atomically(Path(results_dir) / name, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(s))


def result_files(results_dir: str | os.PathLike) -> list[Path]:
    d = Path(results_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob(FILE_GLOB) if not p.name.startswith(".tmp-"))


def read_results(results_dir: str | os.PathLike, *, on_skip=None):
    """All rows under ``results_dir`` as one DataFrame.

    A file that cannot be read is skipped with a :class:`UserWarning` naming it
    (and passed to ``on_skip(path, reason)`` when given); the rest still load. Files written by
    older code (without :data:`CURRENT_SCHEMA_COLUMNS`) raise one :class:`OutdatedResultsError`
    naming ``scripts/migrate_results.py``. Never unpickles and never runs code from results.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    frames, outdated = [], []
    for path in result_files(results_dir):
        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, loudly
            reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"skipping unreadable results file {path}: {reason}", UserWarning, stacklevel=2)
            if on_skip is not None:
                on_skip(path, reason)
            continue
        if not _is_current(table.column_names):
            outdated.append(path.name)
            continue
        df = table.to_pandas()
        df["source_file"] = path.name
        frames.append(df)
    if outdated:
        raise OutdatedResultsError(results_dir, outdated)
    if not frames:
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS) + list(PROVENANCE_COLUMNS))
    with warnings.catch_warnings():
        # all-null columns in some files: their dtype is settled by the coercion below
        warnings.simplefilter("ignore", FutureWarning)
        df = pd.concat(frames, ignore_index=True, sort=False)
    for c in REQUIRED_COLUMNS + PROVENANCE_COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = with_objective(df)
    for c in (c for c in float_columns() if c in df.columns):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in (c for c in int_columns() if c in df.columns):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    return df


def with_objective(df):
    """``df`` with ``objective`` and ``objective_params`` filled in where a row has none (a frame built
    by hand, a row written without them): ``'standard'`` (the clean cross-entropy), no parameters."""
    from bench.objective import DEFAULT_OBJECTIVE

    for c, default in (("objective", DEFAULT_OBJECTIVE), ("objective_params", "{}")):
        if c not in df.columns:
            df[c] = default
        else:
            df[c] = df[c].astype(object).where(df[c].notna() & (df[c].astype(object) != ""), default)
    return df


def iter_rows(results_dir) -> Iterable[dict]:
    return read_results(results_dir).to_dict("records")
