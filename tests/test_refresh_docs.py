"""benchmarks/refresh_docs.py: REPRODUCTION.md's tables are what their commands print from the committed rows."""

import pytest

from script_module import load_script  # tests/ is on sys.path


@pytest.fixture(scope="module")
def rd(repo_root):
    return load_script(repo_root / "benchmarks" / "refresh_docs.py")


DIGITS = "python benchmarks/reproduction_table.py --track digits-cnn"


def test_committed_reproduction_tables_match_the_committed_rows(rd, capsys):
    """Every generated table of REPRODUCTION.md is exactly what its command prints now: a row committed
    without regenerating the tables, or a table edited by hand, fails here."""
    code = rd.main(["--check"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "REPRODUCTION.md: 6 generated blocks, 0 stale" in out


def test_a_stale_block_is_rewritten_and_nothing_else_changes(rd, repo_root, tmp_path, capsys):
    doc = tmp_path / "doc.md"
    before = "# Title\n\nprose above\n\n"
    after = "\nprose below, with a | pipe\n"
    doc.write_text(f"{before}<!-- generated: {DIGITS} -->\n| old | table |\n<!-- /generated -->\n{after}")
    assert rd.main(["--check", str(doc)]) == 1
    out = capsys.readouterr().out
    assert "doc.md:5: stale" in out and "-| old | table |" in out
    assert "| old | table |" in doc.read_text()  # --check writes nothing

    assert rd.main([str(doc)]) == 0
    mod = load_script(repo_root / "benchmarks" / "reproduction_table.py")
    from bench.registry import TRACKS
    from bench.results import read_results

    expected = "\n".join(mod.table(read_results(repo_root / "results"), TRACKS.get("digits-cnn"))) + "\n"
    assert doc.read_text() == f"{before}<!-- generated: {DIGITS} -->\n{expected}<!-- /generated -->\n{after}"
    capsys.readouterr()
    assert rd.main(["--check", str(doc)]) == 0  # and now it is fresh


def test_a_command_continued_over_lines_is_one_command(rd):
    doc = ("<!-- generated: python benchmarks/paired_table.py --track t \\\n  a@0.5:dense \\\n"
           "  'orthogonal_dense[mode=unit]:dense' -->\nbody\n<!-- /generated -->\n")
    (b,) = rd.blocks(doc)
    assert b.command == ("benchmarks/paired_table.py", "--track", "t", "a@0.5:dense", "orthogonal_dense[mode=unit]:dense")
    assert doc[b.start:b.end] == "body\n"


@pytest.mark.parametrize("command", ["python -c 'import os'", "bash benchmarks/x.sh", "python benchmarks/../x.py",
                                     "python benchmarks/no_such_script.py", "python 'benchmarks/reproduction_table.py"])
def test_only_scripts_of_benchmarks_run(rd, tmp_path, command, capsys):
    doc = tmp_path / "doc.md"
    text = f"<!-- generated: {DIGITS} -->\nx\n<!-- /generated -->\n<!-- generated: {command} -->\ny\n<!-- /generated -->\n"
    doc.write_text(text)
    assert rd.main([str(doc)]) == 2
    err = capsys.readouterr().err
    assert "doc.md:4:" in err
    assert doc.read_text() == text  # the first, valid block was not rewritten either


@pytest.mark.parametrize("text, line, what", [
    (f"a\n<!-- generated: {DIGITS} -->\n| t |\n", 2, "has no <!-- /generated -->"),
    (f"<!-- generated: {DIGITS} -->\n<!-- generated: {DIGITS} -->\nx\n<!-- /generated -->\n", 1, "has no"),
    ("a\nb\n<!-- /generated -->\n", 3, "without an opening marker"),
])
def test_unbalanced_markers_are_named_by_line(rd, text, line, what):
    with pytest.raises(rd.DocError, match=f"doc.md:{line}: .*{what}"):
        rd.blocks(text, "doc.md")


def test_a_failing_command_leaves_the_document_as_it_was(rd, tmp_path, capsys):
    """The first block's command succeeds and the second's fails (a track without rows): nothing is written."""
    doc = tmp_path / "doc.md"
    text = (f"<!-- generated: {DIGITS} -->\nstale\n<!-- /generated -->\n"
            "<!-- generated: python benchmarks/reproduction_table.py --track cifar10-vgg16 -->\nz\n<!-- /generated -->\n")
    doc.write_text(text)
    assert rd.main([str(doc)]) == 2
    err = capsys.readouterr().err
    assert "doc.md:4: `python benchmarks/reproduction_table.py --track cifar10-vgg16` failed (exit 1)" in err
    assert "no rows for track cifar10-vgg16" in err
    assert doc.read_text() == text
    assert not [p for p in tmp_path.iterdir() if p.name != "doc.md"]  # no temporary file left behind


def test_a_marker_quoted_in_prose_is_prose(rd):
    doc = (f"Tables sit in (`<!-- generated: python benchmarks/... -->`) and `<!-- /generated -->` blocks.\n"
           f"<!-- generated: {DIGITS} -->\nbody\n<!-- /generated -->\nmore prose -->\n")
    (b,) = rd.blocks(doc, "doc.md")
    assert b.line == 2 and doc[b.start:b.end] == "body\n"
