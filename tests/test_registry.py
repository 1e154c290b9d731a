import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Literal

import pytest

from bench.method import Method, ParamError, parse_params, params_id
from bench.registry import METHODS, Registry, RegistryError


def test_duplicate_name_raises():
    reg = Registry("thing")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(RegistryError, match="duplicate thing name 'a'"):
        @reg.register("a")
        class B:
            pass


def test_duplicate_of_builtin_method_raises():
    METHODS.names()  # load built-ins

    with pytest.raises(RegistryError, match="duplicate method name 'dense'"):
        METHODS.register("dense")(type("Other", (Method,), {}))


def test_unknown_name_lists_available_and_close_matches():
    with pytest.raises(RegistryError) as exc:
        METHODS.get("dens")
    msg = str(exc.value)
    assert "Did you mean: dense" in msg
    for name in METHODS.names():
        assert name in msg


def test_broken_module_is_reported_not_fatal(tmp_path, monkeypatch):
    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("from bench.registry import Registry\nREG = None\n")
    (pkg / "broken.py").write_text("raise ImportError('needs a package that is not installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("widget", builtin_packages=("plugpkg",))
    import plugpkg.good as good  # noqa: F401
    reg.add("ok", object())
    assert reg.names() == ["ok"]
    assert "plugpkg.broken" in reg.load_errors
    with pytest.raises(RegistryError, match="plugpkg.broken .*needs a package"):
        reg.get("missing")


@dataclass(frozen=True)
class _P:
    kappa: float = 1.5
    steps: int = 3
    mode: Literal["a", "b"] = "a"
    flag: bool = False


def test_params_validated_against_dataclass():
    p = parse_params(_P, ["kappa=2", "steps=5", "mode=b", "flag=true"])
    assert p == _P(kappa=2.0, steps=5, mode="b", flag=True)
    assert params_id("m", p) == "m[flag=True,kappa=2.0,mode=b,steps=5]"
    with pytest.raises(ParamError, match="unknown parameter 'kapa'.*known parameters: flag, kappa, mode, steps"):
        parse_params(_P, ["kapa=2"])
    with pytest.raises(ParamError, match="'steps' expects int"):
        parse_params(_P, ["steps=many"])
    with pytest.raises(ParamError, match="one of a, b"):
        parse_params(_P, ["mode=c"])


def test_cli_unknown_method_is_a_clean_error(run_bench):
    r = run_bench("run", "--method", "nope")
    assert r.returncode == 2
    assert "unknown method 'nope'" in r.stderr
    assert "dense" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_entry_point_plugin_installed_for_real(tmp_path, repo_root, run_bench):
    """The README's worked example: a separately installed distribution found through `bench.methods`."""
    target = tmp_path / "site"
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    shutil.copytree(repo_root / "examples" / "bench-plugin-example", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info"))
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert list(target.glob("bench_plugin_example-*.dist-info/entry_points.txt"))
    env = {"PYTHONPATH": str(target)}
    listed = run_bench("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "random_pruning" in listed.stdout
    out = tmp_path / "results"
    r = run_bench("run", "--method", "random_pruning", "--compression", "0.6", "--epochs", "1", "--no-attacks",
                  "--results-dir", str(out), "--quiet", env=env)
    assert r.returncode == 0, r.stderr + r.stdout
    import pandas as pd
    from bench.results import read_results

    df = read_results(out)
    assert list(df["method"]) == ["random_pruning"]
    assert df["compression"].iloc[0] == pytest.approx(0.6, abs=0.01)
    # Without the plugin on the path the name is unknown again: nothing leaked into the environment.
    assert "random_pruning" not in run_bench("list").stdout
    assert isinstance(df, pd.DataFrame)


def test_import_bench_is_cheap():
    code = textwrap.dedent("""
        import sys, bench
        heavy = [m for m in ("torch", "pandas", "pyarrow", "methods", "streamlit") if m in sys.modules]
        print(",".join(heavy))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
