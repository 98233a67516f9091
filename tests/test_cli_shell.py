"""The CLI shell: every command has --help, and user errors become one line."""

import subprocess
import sys

import pytest

from emo.cli._apps import app
from emo.panels import get_panel, resolve_genes


def _commands(typer_app, prefix=()):
    import typer.main

    group = typer.main.get_command(typer_app)
    stack = [(prefix, group)]
    while stack:
        path, cmd = stack.pop()
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            stack.append((path + (name,), sub))


@pytest.mark.parametrize("path", list(_commands(app)))
def test_every_command_has_help(path):
    out = subprocess.run([sys.executable, "-m", "emo", *path, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_unknown_panel_is_one_line_error():
    out = subprocess.run(
        [sys.executable, "-c", "from emo.panels import get_panel; get_panel('nope')"],
        capture_output=True, text=True,
    )
    assert "unknown gene panel 'nope'" in out.stderr


def test_panels_have_paper_sizes():
    assert len(get_panel("pam50")) == 50 == len(set(get_panel("pam50")))
    assert len(get_panel("pam50_proliferation")) == 11
    assert set(get_panel("pam50_proliferation")) <= set(get_panel("pam50"))
    assert len(get_panel("oncotype_dx")) == 21
    assert len(get_panel("endopredict")) == 12
    assert resolve_genes("CDCA1,ESR1,pam50_proliferation")[:2] == ["NUF2", "ESR1"]


def test_panels_match_shared_pam50_table(shared_data):
    import pandas as pd

    table = pd.read_csv(shared_data("genesets/pam50_genes.tsv"), sep="\t")
    assert set(table["current_symbol"]) == set(get_panel("pam50"))
    prolif = set(table.loc[table["in_proliferation_11"] == "Y", "current_symbol"])
    assert prolif == set(get_panel("pam50_proliferation"))


def test_gene_files_resolve_like_gene_lists(tmp_path):
    import pandas as pd

    from emo.errors import EmoError
    from emo.panels import read_gene_file

    txt = tmp_path / "genes.txt"
    txt.write_text("# planted\nESR1\nCDCA1  PGR # old PAM50 id renamed\n\nESR1\n")
    assert read_gene_file(txt) == ["ESR1", "CDCA1", "PGR", "ESR1"]
    assert resolve_genes(txt) == resolve_genes(str(txt)) == ["ESR1", "NUF2", "PGR"]
    table = tmp_path / "genes.csv"
    pd.DataFrame({"gene": ["A", "B", "C"], "selected": [True, False, True]}).to_csv(table, index=False)
    assert read_gene_file(table) == ["A", "C"]
    with pytest.raises(EmoError, match="gene list not found"):
        read_gene_file(tmp_path / "nope.txt")
