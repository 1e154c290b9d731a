"""A metric family in one file: the mean logit margin on the attacked points.

Copy it into ``bench/metrics/families/`` (every module there is registered on first use), or
publish it under the entry-point group ``bench.metrics``. Its column then appears in every new
row, in ``bench show``, in the leaderboard's table and sort menu, in the summary ``bench run``
prints and in ``bench list --columns``. Import torch inside ``compute`` only: the leaderboard
reads the declaration without torch.
"""

from bench.columns import Column, EvalInputs, MetricFamily
from bench.registry import register_metric


def compute(inp: EvalInputs) -> dict:
    import torch

    if not inp.n_eval:
        return {}  # nothing to measure: the column stays null
    y = inp.y_eval.to(inp.device)[:, None]
    with torch.no_grad():
        logits = inp.model(inp.x_eval.to(inp.device)).float()
    true = logits.gather(1, y)[:, 0]
    best_other = logits.scatter(1, y, float("-inf")).amax(1)
    return {"logit_margin": float((true - best_other).mean())}


FAMILY = register_metric(MetricFamily(
    name="margin", title="Logit margin", order=45, compute=compute,
    columns=(
        Column("logit_margin", "float", "mean over the attacked points of the true class's logit minus the largest "
                                        "other logit (negative: misclassified on average)",
               agg="mean", label="margin", fmt=".3f", views=("show", "board"), position=58, sort="desc",
               sort_label="logit margin"),
    ),
))
