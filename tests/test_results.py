import warnings

import pandas as pd
import pytest

from bench.results import REQUIRED_COLUMNS, ResultsError, read_results, write_row


def _row(**kw):
    r = {"run_id": "abc123", "status": "ok", "method": "dense", "track": "digits-cnn", "seed": 0,
         "clean_acc": 0.9, "n_params": 10, "n_params_dense": 10, "compression": 0.0,
         "aa_curve": [{"norm": "Linf", "eps": 0.1, "acc": 0.5}], "layer_kappa": [1.0, 2.5]}
    r.update(kw)
    return r


def test_roundtrip_numbers_stay_numbers(tmp_path):
    path = write_row(_row(), tmp_path)
    assert path.parent == tmp_path and path.suffix == ".parquet"
    df = read_results(tmp_path)
    assert len(df) == 1
    for c in REQUIRED_COLUMNS:
        assert c in df.columns
    assert df["clean_acc"].dtype == "float64" and df["robust_acc"].dtype == "float64"
    assert pd.api.types.is_integer_dtype(df["n_params"])
    assert list(df["layer_kappa"].iloc[0]) == [1.0, 2.5]
    assert df["aa_curve"].iloc[0][0]["eps"] == 0.1


def test_failed_write_leaves_nothing_behind(tmp_path):
    good = write_row(_row(run_id="good"), tmp_path)
    with pytest.raises(Exception):
        write_row(_row(run_id="bad", weird=object()), tmp_path)  # pyarrow cannot store an object
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]
    assert read_results(tmp_path)["run_id"].tolist() == ["good"]


def test_unreadable_file_is_skipped_with_warning(tmp_path):
    write_row(_row(run_id="r1"), tmp_path)
    write_row(_row(run_id="r2", method="pruning"), tmp_path)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    skipped = []
    with pytest.warns(UserWarning, match="broken.parquet"):
        df = read_results(tmp_path, on_skip=lambda p, why: skipped.append(p))
    assert sorted(df["run_id"]) == ["r1", "r2"]
    assert skipped == [bad]


def test_rows_are_validated(tmp_path):
    with pytest.raises(ResultsError, match="status"):
        write_row(_row(status="maybe"), tmp_path)
    with pytest.raises(ResultsError, match="lacks run_id"):
        write_row(_row(run_id=""), tmp_path)


def test_empty_dir_gives_empty_frame_with_columns(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = read_results(tmp_path / "nothing-here")
    assert df.empty and "clean_acc" in df.columns


def test_files_share_one_schema_so_pandas_reads_the_directory(tmp_path):
    # one run attacked (curves, flags), one not (nulls): still one data set for pyarrow/pandas
    write_row(_row(run_id="a", robust_acc=0.5, aa_flags=["Linf eps=0.1 standard: randomness"], error=None), tmp_path)
    write_row(_row(run_id="b", aa_curve=None, layer_kappa=None, status="failed", error="RuntimeError: x"), tmp_path)
    df = pd.read_parquet(tmp_path)
    assert sorted(df["run_id"]) == ["a", "b"]
    assert df.set_index("run_id").loc["a", "robust_acc"] == 0.5


def test_value_that_breaks_a_declared_type_is_a_clear_error(tmp_path):
    with pytest.raises(ResultsError, match="column 'clean_acc'"):
        write_row(_row(clean_acc="high"), tmp_path)
    assert not list(tmp_path.iterdir())


def _reproduction_table(repo_root):
    from script_module import load_script  # tests/ is on sys.path

    return load_script(repo_root / "benchmarks" / "reproduction_table.py")


def _committed(repo_root, track_name):
    """The reproduction-table module, the committed rows (with their objective) and the track."""
    import bench.tracks  # noqa: F401
    from bench.registry import TRACKS
    from bench.results import with_objective

    return _reproduction_table(repo_root), with_objective(read_results(repo_root / "results")), TRACKS.get(track_name)


def test_reproduction_table_matches_bench_show_on_the_committed_digits_rows(repo_root):
    """benchmarks/reproduction_table.py (REPRODUCTION.md) and bench show (bench.summary) give the same
    seed mean and the same Wilson interval, over one seed's worth of points, for the committed rows."""
    from bench.summary import pooled_interval

    mod = _reproduction_table(repo_root)
    from bench.registry import TRACKS
    import bench.tracks  # noqa: F401

    df = read_results(repo_root / "results")
    lines = mod.table(df, TRACKS.get("digits-cnn"))
    dense = next(line for line in lines if line.startswith("| dense | 0 |"))
    ok = df[(df["track"] == "digits-cnn") & (df["method"] == "dense") & (df["status"] == "ok")]
    iv = pooled_interval(ok["robust_acc"], ok["aa_n"])
    assert iv["points"] == 360  # one seed's worth, not 3 x 360
    cell = dense.split(" | ")[4]
    assert cell.startswith(f"{ok['robust_acc'].mean() * 100:.1f} ± ")
    assert cell.endswith(f"[{iv['ci_low'] * 100:.1f}, {iv['ci_high'] * 100:.1f}]")


def test_reproduction_table_keeps_objectives_apart(repo_root):
    """The committed MNIST dense rows: 3 clean-trained seeds, and pgd_at rows in a table of their own whose
    headline is the training ε 0.3."""
    mod, df, track = _committed(repo_root, "mnist-lenet5-e10")
    at = df[(df["track"] == track.name) & (df["objective"] == "pgd_at") & (df["method"] == "dense") & (df["status"] == "ok")]
    if at.empty:
        pytest.skip("no committed pgd_at rows")
    clean = mod.table(df, track)
    assert "AA std ε=0.1 %" in clean[0] and next(x for x in clean if x.startswith("| dense | 0 |")).split(" | ")[2] == "3"
    adv = mod.table(df, track, "pgd_at")
    assert "AA std ε=0.3 %" in adv[0]
    line = next(x for x in adv if x.startswith("| dense | 0 |"))
    dense = line.split(" | ")
    assert dense[2] == str(at["seed"].nunique()) and dense[4].startswith(f"{at['robust_acc'].mean() * 100:.1f}")
    # what reading an adversarially trained row needs, from the rows: the PGD monitor's last value, the
    # catastrophic-overfitting count and the trust verdicts; none of it in the clean-trained table
    assert "trust" not in clean[0] and "PGD monitor" not in clean[0]
    cell = dict(zip(*([c.strip() for c in x.strip("|").split("|")] for x in (adv[0], line))))
    assert cell["PGD monitor, last epoch %"].startswith(f"{sum(c[-1] for c in at['train_pgd_curve']) / len(at) * 100:.1f}")
    assert cell["catastrophic overfitting"] == f"{int(at['catastrophic_overfitting'].sum())} of {len(at)}"
    n_suspect = int(at["trust"].str.startswith("suspect").sum())
    assert cell["trust"].count("suspect") == min(n_suspect, 1) and (n_suspect < 2 or f"×{n_suspect}" in cell["trust"])


def test_reproduction_table_shortens_and_counts_trust_verdicts(repo_root):
    mod = _reproduction_table(repo_root)
    sq = "suspect: Square (black-box) broke points the white-box attacks did not (Linf eps=0.3 standard)"
    two = "suspect: Transfer from the dense parent broke 9 points; Square (black-box) broke points"
    assert mod._trust(["ok"]) == "ok" and mod._trust([sq]) == "suspect: Square"
    assert mod._trust([sq, sq, "ok"]) == "ok ×1, suspect: Square ×2"
    assert mod._trust([two, None, ""]) == "suspect: Transfer, Square" and mod._trust([]) == "–"


def test_reproduction_table_has_the_papers_columns_on_the_committed_cifar_rows(repo_root):
    """The CIFAR-10 table carries the columns the CondLR paper's VGG16 table shares with ours (FGSM on
    its grid, L2-PGD at 0.3), with the seed means of the rows, so REPRODUCTION.md's comparison is one command."""
    mod, df, track = _committed(repo_root, "cifar10-vgg16q-e25")
    dense = df[(df["track"] == track.name) & (df["objective"] == "standard") & (df["method"] == "dense") & (df["status"] == "ok")]
    if dense.empty:
        pytest.skip("no committed cifar10-vgg16q-e25 rows")
    lines = mod.table(df, track)
    head = lines[0].split(" | ")
    fgsm, l2 = head.index("FGSM ε=0 / 0.002 / 0.004 / 0.006 % (means)"), head.index("L2-PGD ε=0.3 %")
    cells = next(x for x in lines if x.startswith("| dense | 0 |")).split(" | ")

    def mean_at(col, eps):
        return sum(next(p["acc"] for p in c if abs(p["eps"] - eps) < 1e-9) for c in dense[col]) / len(dense)

    assert cells[fgsm] == " / ".join(f"{mean_at('fgsm_curve', e) * 100:.1f}" for e in (0.0, 0.002, 0.004, 0.006))
    assert cells[l2].startswith(f"{mean_at('pgd_l2_curve', 0.3) * 100:.1f}")
