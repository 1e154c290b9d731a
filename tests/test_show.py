"""Configuration names as people type them (bench.method.short_id) and `bench show --format markdown`,
on the committed rows."""

from __future__ import annotations

import json

import pytest

from bench.results import read_results, with_objective


@pytest.fixture(scope="module")
def committed(repo_root):
    df = read_results(repo_root / "results")
    return df[df["status"] == "ok"]


def test_short_name_of_every_committed_configuration_resolves_back_to_its_full_id(committed):
    from bench.compare import parse_spec
    from bench.method import short_id

    configs = committed[["method", "method_params", "method_id"]].drop_duplicates()
    names = set()
    for method, params, full in configs.itertuples(index=False):
        name = short_id(method, params)
        assert parse_spec(name).method_id == full, (name, full)  # a valid spec naming the same configuration
        assert len(name) <= len(full)
        names.add(name)
    assert len(names) == len(configs)  # no two configurations share a name
    # defaults left out, the differing parameter kept
    assert {"robust_lowrank", "robust_lowrank[mode=mean]", "robust_lowrank[step_scale=reference]",
            "orthogonal_dense", "orthogonal_dense[mode=unit]", "robust_dlrt", "dlrt", "dense"} <= names


def test_a_value_that_is_not_the_current_default_stays_in_the_name():
    from bench.method import short_id

    old = {"kappa": 1.1, "mode": "approx_orth", "step_scale": "inv_a"}  # as if trained with an older default
    assert short_id("robust_lowrank", json.dumps(old)) == "robust_lowrank[kappa=1.1]"
    # a bool default is not equal to an int that happens to compare equal
    assert short_id("robust_dlrt", {"clamp": 1}) == "robust_dlrt[clamp=1]"
    # a method not installed here: its defaults are unknown, every parameter stays
    assert short_id("someone_elses_method", '{"b": 2, "a": 1}') == "someone_elses_method[a=1,b=2]"


def test_show_markdown_has_one_line_per_configuration_named_for_bench_compare(repo_root, committed, capsys):
    from bench.cli import main
    from bench.compare import compare
    from bench.summary import aggregate

    track = "mnist-lenet5-e10"
    assert main(["show", "--track", track, "--objective", "standard", "--format", "markdown",
                 "--results-dir", str(repo_root / "results")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["track", "method", "target"] and "robust %" in header and "params" not in header
    assert set(table[1].replace("|", "").split()) == {"---"}
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    mine = with_objective(committed)
    mine = mine[(mine["track"] == track) & (mine["objective"] == "standard")]
    assert len(body) == len(aggregate(mine))
    assert all(len(cells) == len(header) for cells in body)
    ref = next(cells for cells in body if cells[1] == "robust_lowrank[step_scale=reference]" and cells[2] == "0.50")
    # the name and target copied from the table are what bench compare takes
    result = compare(mine, f"{ref[1]}@0.5", "robust_lowrank@0.5", track=track)
    assert result.a.label == "robust_lowrank[step_scale=reference]@0.5" and result.b.label == "robust_lowrank@0.5"
    assert "robust_lowrank[step_scale=reference]@0.5" in result.text()


def test_markdown_escapes_pipes():
    import pandas as pd

    from bench.summary import markdown_table

    text = markdown_table(pd.DataFrame({"a": ["x|y"], "b": [float("nan")]}))
    assert text.splitlines() == ["| a | b |", "| --- | --- |", "| x\\|y |  |"]
    assert markdown_table(pd.DataFrame()) == ""
