"""The model store and the import graph: a run killed after training leaves one stored model, and
bench/ has no import cycle (claims and the store are modules of their own)."""

import ast
import signal
from pathlib import Path

from bench.results import read_results
from bench.store import sha256_of
from tests.test_cli import _bench, _start_until


def test_a_run_killed_between_storing_its_model_and_writing_its_row_leaves_one_model(tmp_path, shared_data_dir):
    args = ["run", "--method", "dense", "--epochs", "0.05", "--n-eval", "20", "--threads", "1", "--quiet",
            "--data-dir", str(shared_data_dir)]
    models = tmp_path / ".models"
    for _ in range(2):  # killed twice while evaluating (the model stored, the row not yet written)
        proc = _start_until(args, tmp_path, lambda: list(models.glob(".pending-*.pt")), timeout=300,
                            what="the model was stored")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert not read_results(tmp_path).shape[0]
    done = _bench(args, tmp_path)
    assert done.returncode == 0, done.stderr
    df = read_results(tmp_path)
    files = sorted(models.iterdir())
    assert len(df) == 1 and [f.name for f in files] == [f"{df['run_id'].iloc[0]}.pt"]
    assert sha256_of(tmp_path / df["model_path"].iloc[0]) == df["model_sha256"].iloc[0]


def _bench_imports(path: Path, modules: set[str]) -> set[str]:
    """The bench modules ``path`` imports, at the top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bench"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out & modules


def test_bench_has_no_import_cycle(repo_root):
    files = {}
    for f in (repo_root / "bench").rglob("*.py"):
        parts = f.relative_to(repo_root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {m: _bench_imports(f, set(files)) - {m, "bench"} for m, f in files.items()}
    assert graph["bench.runner"] >= {"bench.claims", "bench.store", "bench.identity"}
    state: dict[str, str] = {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            assert state.get(d) != "open", "import cycle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_names_moved_out_of_runner_and_cli_are_still_importable_there():
    """bench/runner.py and bench/cli.py were split by job (prepare, build, reevaluate; commands,
    report): scripts that import the public names from the old place keep working."""
    from bench import build, cli, claims, prepare, reevaluate, report, runner

    moved = {build: ("build_for_track", "git_commit", "input_normalization", "load_dataset_for", "model_kwargs_for",
                     "provenance", "resolve_device", "seed_everything"),
             prepare: ("Prepared", "prepare", "eval_protocol_for"), claims: ("RunBusy",),
             reevaluate: ("dense_parent", "evaluate_stored", "load_stored_model", "transfer_source")}
    for module, names in moved.items():
        for name in names:
            assert getattr(runner, name) is getattr(module, name), name
    assert cli.format_summary is report.format_summary
