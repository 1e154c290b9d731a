"""A transfer attack from the dense parent: APGD-CE examples crafted on the dense model of the same track
and seed (from the model store), evaluated on this row's model, at the headline ε on the attacked points."""

from __future__ import annotations

import hashlib
import json
import time

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric

#: bump when the crafted examples change for the same inputs (the cache key holds it)
CRAFT_VERSION = 1
NORM = "Linf"


def _cache_key(parent, eps: float, indices, seed: int) -> str:
    blob = json.dumps([CRAFT_VERSION, parent.run_id, parent.sha256, NORM, repr(float(eps)), list(indices), int(seed)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def crafted(parent, inp: EvalInputs, eps: float):
    """(examples, the parent's own robust mask on them, seconds spent crafting: 0 when cached). The
    examples are cached per (parent, ε, points, seed) under ``parent.cache_dir``, so the compressed
    rows of one seed attack their dense parent once."""
    import os

    import torch

    from bench.metrics.accuracy import correct_mask
    from bench.metrics.autoattack import apgd_ce_examples

    seed = int(inp.ctx.seed)
    path = None
    if parent.cache_dir is not None:
        path = parent.cache_dir / f"{parent.run_id}_{_cache_key(parent, eps, inp.indices, seed)}.pt"
        if path.exists():
            try:
                got = torch.load(path, map_location="cpu", weights_only=True)
                if got["x_adv"].shape == inp.x_eval.shape:
                    return got["x_adv"], got["source_robust"], 0.0
            except Exception:  # noqa: BLE001 - a cut-off or foreign file is recomputed, not trusted
                pass
    t0 = time.perf_counter()
    dense = parent.load()
    x_adv = apgd_ce_examples(dense, inp.x_eval, inp.y_eval, eps=eps, norm=NORM, seed=seed, device=inp.device)
    source_robust = (correct_mask(dense, inp.x_eval, inp.y_eval, device=inp.device)
                     & correct_mask(dense, x_adv, inp.y_eval, device=inp.device))
    seconds = time.perf_counter() - t0
    del dense
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        torch.save({"x_adv": x_adv, "source_robust": source_robust}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent run reads the whole file or none
    return x_adv, source_robust, seconds


def compute(inp: EvalInputs) -> dict:
    if not inp.attacking:
        return {"transfer_note": "attacks skipped" if inp.n_eval else "no points to attack (n_eval = 0)"}
    source = inp.ctx.transfer_source
    if source is None:
        return {"transfer_note": "no model store to find a dense parent in (evaluated outside a run)"}
    parent = source()
    if isinstance(parent, str):
        return {"transfer_note": parent}
    from bench.metrics.accuracy import correct_mask
    from bench.outcomes import entry

    t0 = time.perf_counter()
    eps = float(inp.protocol.headline_eps)
    x_adv, source_robust, _ = crafted(parent, inp, eps)
    # as every attack here: a point misclassified without attack counts as broken
    robust = (correct_mask(inp.model, inp.x_eval, inp.y_eval, device=inp.device)
              & correct_mask(inp.model, x_adv, inp.y_eval, device=inp.device))
    n = inp.n_eval
    return {
        "transfer_acc": int(robust.sum()) / n,
        "transfer_n": n,
        "transfer_eps": eps,
        "transfer_source_acc": int(source_robust.sum()) / n,
        "transfer_outcomes": [entry("transfer", NORM, eps, robust)],
        "transfer_source_run_id": parent.run_id,
        "transfer_note": "",
        "transfer_seconds": time.perf_counter() - t0,
    }


def summary(row: dict) -> list[str]:
    if row.get("transfer_acc") is None:
        note = row.get("transfer_note")
        return [f"  transfer    - ({note})"] if note else []
    return [f"  transfer    {fmt(row.get('transfer_acc'))} at Linf eps {fmt(row.get('transfer_eps'), '.4g')}: APGD-CE "
            f"examples of the dense run {row.get('transfer_source_run_id')} (which keeps "
            f"{fmt(row.get('transfer_source_acc'))} on them); AutoAttack here {fmt(row.get('robust_acc'))}"]


FAMILY = register_metric(MetricFamily(
    name="transfer", title="Transfer from the dense parent", order=55, compute=compute, summary=summary,
    description=("A black-box check of the white-box numbers: APGD-CE (pyautoattack, the standard version's "
                 "settings) on the dense model of the same track and seed, found in the results directory's "
                 "model store (method 'dense', status ok, its stored weights present and matching their sha256; "
                 "the same sweep and budget preferred), at the headline ε (L∞) on the attacked points; each "
                 "point's example is APGD-CE's highest-loss iterate, and the examples are evaluated on this "
                 "row's model. A transfer attack that breaks points AutoAttack left standing says the white-box "
                 "attacks failed on this model (`trust`). Absent, with `transfer_note` saying why, for the dense "
                 "rows themselves and where no dense parent is stored; `bench eval RUN_ID --transfer` adds it "
                 "later. The examples are cached in `<results>/.state/transfer/` per (parent, ε, points, seed). "
                 "See `bench/metrics/families/transfer.py`."),
    columns=(
        Column("transfer_acc", "float", "accuracy on the dense parent's APGD-CE examples at the headline ε (L∞), "
                                        "on the attacked points (a point misclassified clean counts as broken)",
               unit="fraction", agg="mean", label="transfer acc", short="transfer %", points="transfer_n",
               views=("show", "board"), position=34, sort="desc", sort_label="transfer accuracy",
               help="accuracy under adversarial examples crafted on the dense model of the same seed (APGD-CE, "
                    "headline ε), mean over seeds; empty: not evaluated (dense rows, no dense parent stored)"),
        Column("transfer_n", "int", "points attacked by the transfer attack (the attacked points)"),
        Column("transfer_eps", "float", "ε of the transfer attack (L∞: the headline ε)"),
        Column("transfer_source_acc", "float", "the dense parent's own accuracy on its examples (how strong the "
                                               "attack was where it was crafted)", unit="fraction"),
        Column("transfer_outcomes", "outcomes", "per attacked point, robust or not to the transfer attack: one "
                                                "entry {attack='transfer', norm='Linf', eps, n, bits} "
                                                "(bench/outcomes.py); empty when transfer_acc is"),
        Column("transfer_source_run_id", "str", "the dense run whose stored model the examples were crafted on"),
        Column("transfer_note", "str", "why transfer_acc is empty ('the row is the dense model itself', 'no dense "
                                       "run of ... in the model store', 'attacks skipped'), or where the examples "
                                       "came from; '' otherwise"),
        Column("transfer_seconds", "float", "wall time of the transfer attack (crafting included unless cached)",
               unit="s"),
    ),
))
