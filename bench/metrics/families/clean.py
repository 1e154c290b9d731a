"""Clean accuracy on the whole test split, on the validation split and on the attacked points."""

from __future__ import annotations

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric


def wilson_columns(acc: float | None, n: int) -> tuple[float | None, float | None]:
    """95% Wilson interval of an accuracy measured on ``n`` points (None, None when there is none)."""
    from bench.metrics.accuracy import wilson_interval

    if acc is None or not n:
        return None, None
    return wilson_interval(round(acc * n), n)


def compute(inp: EvalInputs) -> dict:
    from bench.metrics.accuracy import accuracy, correct_mask
    from bench.outcomes import entry

    data, dev = inp.data, inp.device
    out = {
        "n_test": int(len(data.y_test)),
        "clean_acc": accuracy(inp.model, data.x_test, data.y_test, device=dev),
        "val_acc": accuracy(inp.model, data.x_val, data.y_val, device=dev) if len(data.y_val) else None,
        "attacked_indices": list(inp.indices),
    }
    if inp.n_eval:
        correct = correct_mask(inp.model, inp.x_eval, inp.y_eval, device=dev)
        out["clean_acc_eval"] = int(correct.sum()) / inp.n_eval
        out["clean_outcomes"] = [entry("clean", "", 0.0, correct)]
    out["clean_acc_ci_low"], out["clean_acc_ci_high"] = wilson_columns(out["clean_acc"], out["n_test"])
    return out


def summary(row: dict) -> list[str]:
    return [f"  clean acc   {fmt(row.get('clean_acc'))}   val acc {fmt(row.get('val_acc'))}"]


FAMILY = register_metric(MetricFamily(
    name="clean", title="Clean accuracy", order=10, compute=compute, summary=summary,
    columns=(
        Column("n_test", "int", "test points (the whole test split)"),
        Column("clean_acc", "float", "accuracy on the whole test split", unit="fraction", agg="mean",
               label="clean acc", short="clean %", points="n_test", points_label="test",
               views=("show", "board"), position=20, sort="desc", sort_label="clean accuracy",
               help="test accuracy on the whole test split, mean over seeds"),
        Column("val_acc", "float", "accuracy on the validation hold-out (null without one)", unit="fraction",
               agg="mean"),
        Column("clean_acc_eval", "float", "accuracy on the attacked points, unattacked", unit="fraction"),
        Column("clean_acc_ci_low", "float", "95% Wilson interval of clean_acc over the n_test points, low end",
               unit="fraction"),
        Column("clean_acc_ci_high", "float", "95% Wilson interval of clean_acc, high end", unit="fraction"),
        Column("clean_outcomes", "outcomes", "per attacked point, correct without attack: one entry {attack='clean', "
                                             "norm='', eps=0, n, bits}, bits a base64 bitmask over attacked_indices "
                                             "(bench/outcomes.py); empty for rows written before it"),
        Column("attacked_indices", "list<int>", "test-split indices every attack used, ascending (the track's "
                                               "attack_points: the first n_eval, or a seeded permutation's), so two "
                                               "rows compare point for point"),
    ),
))
