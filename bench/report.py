"""The text of one run's result, as ``bench run`` and ``bench eval`` print it, and of one
configuration's parameters, as ``bench sweep`` prints it."""

from __future__ import annotations

from bench.columns import fmt


def format_summary(row: dict, path) -> str:
    """What `bench run` prints: the run's data, size and training, then each metric family's lines
    (:meth:`bench.columns.MetricFamily.summary_lines`, in evaluation order)."""
    from bench.columns import families
    from bench.summary import objective_text

    lines = [
        "",
        f"== {row['method_id']} on {row['track']} (seed {row['seed']})"
        + (f", trained with {objective_text(row)}" if row.get("objective", "standard") != "standard" else "") + " ==",
        f"  data        {row.get('dataset')} [{row.get('data_source')}]  train {row.get('n_train')}  "
        f"val {row.get('n_val')}  test {row.get('n_test')}",
        f"  params      {fmt(row.get('n_params'), ',')} of {fmt(row.get('n_params_dense'), ',')} dense  "
        f"compression {fmt(row.get('compression'), '.4f')} (target {fmt(row.get('compression_target'), '.2f')})",
        f"  training    {fmt(row.get('epochs'), '.2f')} epochs, {row.get('steps')} steps, "
        f"{fmt(row.get('train_seconds'), '.1f')} s, {fmt(row.get('images_per_second'), ',.0f')} img/s "
        f"on {row.get('device_name')}",
    ]
    curve = row.get("train_pgd_curve")
    if curve is not None and len(curve):  # a list, or an array when the row was read back from parquet
        lines.append(f"  overfit     PGD acc per epoch (256 val points, training eps) "
                     f"{' '.join(f'{v:.3f}' for v in curve)}"
                     + ("  CATASTROPHIC OVERFITTING" if row.get("catastrophic_overfitting") else ""))
    for family in families():
        lines += family.summary_lines(row)
    lines.append(f"  written     {path}")
    return "\n".join(lines)


def params_text(cfg) -> str:
    """A configuration's method parameters and non-default objective, as `` key=value ...``."""
    text = "".join(f" {k}={v}" for k, v in sorted(cfg.method_params.items()))
    if cfg.objective != "standard":
        text += f" objective={cfg.objective}" + (
            "[" + ",".join(f"{k}={v}" for k, v in sorted(cfg.objective_params.items())) + "]"
            if cfg.objective_params else "")
    return text
