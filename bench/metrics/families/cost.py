"""Cost of the inference form: non-zero parameters, FLOPs and latency beside a dense model's."""

from __future__ import annotations

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric

#: images per batch for the latency measurement (fewer when the test split is smaller)
LATENCY_BATCH = 128


def compute(inp: EvalInputs) -> dict:
    from bench.compression import nonzero_param_count
    from bench.metrics.cost import flops_per_example, inference_form, latency_ms

    data, device = inp.data, inp.device
    deployed = inference_form(inp.model)  # low-rank layers with U·S merged, as n_params counts them
    out = {"n_nonzero": nonzero_param_count(deployed),
           "flops_per_example": flops_per_example(deployed, data.x_test[:1].to(device))}
    bs = min(LATENCY_BATCH, len(data.y_test))
    batch = data.x_test[:bs].to(device)
    lat = latency_ms(deployed, batch)
    del deployed
    out.update(latency_ms_per_batch=lat["ms"], latency_repeats=lat["repeats"], latency_batch_size=bs)
    if inp.ctx.dense_factory is not None:
        dense = inp.ctx.dense_factory().to(device).eval()
        dlat = latency_ms(dense, batch)
        out["dense_latency_ms_per_batch"] = dlat["ms"]
        out["latency_ratio"] = lat["ms"] / dlat["ms"] if dlat["ms"] > 0 else None
        del dense
    return out


def summary(row: dict) -> list[str]:
    if row.get("flops_per_example") is None:
        return []
    dense_lat = row.get("dense_latency_ms_per_batch")
    return [f"  cost        {row.get('n_nonzero') or 0:,} non-zeros  {row['flops_per_example']:,} FLOPs/example  "
            f"latency {fmt(row.get('latency_ms_per_batch'), '.2f')} ms/batch of {row.get('latency_batch_size')}"
            + (f" (dense {fmt(dense_lat, '.2f')} ms)" if dense_lat else "")]


FAMILY = register_metric(MetricFamily(
    name="cost", title="Cost", order=30, compute=compute, summary=summary,
    description=("Of the inference form: low-rank layers merged to two plain layers with U·S multiplied once, the "
                 "form `n_params` counts. See `bench/metrics/cost.py`."),
    columns=(
        Column("n_nonzero", "int", "non-zero parameters, pruning masks applied", agg="mean"),
        Column("flops_per_example", "int", "forward FLOPs of one example (torch.utils.flop_counter; dense FLOPs for "
                                           "unstructured pruning)", unit="FLOPs", agg="mean", label="FLOPs",
               fmt=",.0f", views=("board",), position=75, sort="asc", help="multiply-adds per example"),
        Column("latency_ms_per_batch", "float", "median forward time of one batch of latency_batch_size test images "
                                                "on the run's device", unit="ms", agg="mean"),
        Column("dense_latency_ms_per_batch", "float", "the same for a freshly built dense model of the same "
                                                      "architecture", unit="ms"),
        Column("latency_ratio", "float", "latency_ms_per_batch / dense_latency_ms_per_batch"),
        Column("latency_repeats", "int", "timed repeats behind the medians"),
        Column("latency_batch_size", "int", "images per timed batch"),
    ),
))
