"""Rewrite result files once to the current schema, so that readers need no branch for older rows.

    python scripts/migrate_results.py results/          # rewrite in place (atomically, file by file)
    python scripts/migrate_results.py results/ --check  # say what would change, write nothing

Fills what a row written by older code lacks but its own ``config_json`` determines:

* ``config_id`` (rows written before the column existed): :func:`bench.identity.config_id` of the
  row's ``config_json``, the id the sweep already derived for them;
* ``objective`` / ``objective_params`` (rows written before training objectives existed): those
  runs trained on the clean cross-entropy, ``standard`` with no parameters.

Every other column, every value and the file's parquet key-value metadata are kept as they are;
a column the file lacks is appended. Files already current are left untouched.
:func:`bench.results.read_results` refuses a file without these columns
(:data:`bench.results.CURRENT_SCHEMA_COLUMNS`) with an error naming this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fills(table) -> dict[str, object]:
    """The columns (name -> the one row's value) ``table`` (one result row) lacks or has null."""
    from bench.identity import config_id

    row = {k: v[0] for k, v in table.to_pydict().items()}
    out = {}
    if not row.get("config_id") and row.get("config_json"):
        out["config_id"] = config_id(json.loads(row["config_json"]))
    if not row.get("objective"):
        out["objective"] = "standard"
    if not row.get("objective_params"):
        out["objective_params"] = "{}"
    return out


def migrate_file(path: Path, write: bool) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.results import write_atomically

    table = pq.read_table(path)
    if table.num_rows != 1:
        raise SystemExit(f"{path}: {table.num_rows} rows; a result file holds one")
    new = fills(table)
    if not new or not write:
        return new
    meta = table.schema.metadata
    for name, value in new.items():
        arr = pa.array([value], type=pa.string())
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, pa.field(name, pa.string()), arr)
        else:
            table = table.append_column(pa.field(name, pa.string()), arr)
    table = table.replace_schema_metadata(meta)
    write_atomically(path, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file would change")
    args = ap.parse_args(argv)
    from bench.results import result_files

    changed = 0
    for path in result_files(args.results_dir):
        new = migrate_file(path, write=not args.check)
        if new:
            changed += 1
            print(f"{path.name}: {', '.join(f'{k}={v}' for k, v in new.items())}")
    print(f"{changed} file(s) {'to rewrite' if args.check else 'rewritten'}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
