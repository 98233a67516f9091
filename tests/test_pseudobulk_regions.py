"""her2st regions as pseudo-bulk samples (real counts), and the region benchmark's refusal of count-only sections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emo.errors import EmoError
from emo.expression import read_her2st, region_of_spots, region_pseudobulk

pytestmark = pytest.mark.slow  # region features of real her2st sections


ROOT = Path(__file__).resolve().parents[1]


def test_regions_sum_raw_counts_of_3x3_spot_blocks(shared_data):
    data = shared_data("her2st")
    adata = read_her2st(data, "C3")
    counts = pd.read_csv(data / "counts" / "C3.tsv.gz", sep="\t", index_col=0)
    genes = ["ERBB2", "MKI67", "NOT_A_GENE", "GRB7"]
    expr, spot_region = region_pseudobulk(adata, genes)

    # Independent reference: region from the count row id "<x>x<y>", pandas groupby-sum, log2(CPM + 1).
    xy = counts.index.str.split("x", expand=True)
    region = [f"C3_{int(x) // 3}_{int(y) // 3}" for x, y in xy]
    summed = counts.groupby(region).sum()
    sizes = pd.Series(region).value_counts()
    summed = summed.loc[sorted(sizes.index[sizes >= 5])]
    cpm = summed.div(summed.sum(axis=1), axis=0) * 1e6
    ref = np.log2(cpm.reindex(columns=genes, fill_value=0.0) + 1)
    assert list(expr.index) == list(ref.index) and len(expr) > 10
    np.testing.assert_allclose(expr.to_numpy(), ref.to_numpy(), rtol=1e-9, atol=1e-9)
    assert (expr["NOT_A_GENE"] == 0).all() and expr["ERBB2"].std() > 0
    assert spot_region.value_counts().min() >= 5 and set(spot_region) == set(expr.index)
    assert spot_region.index.isin(adata.obs_names).all()


def test_shifted_grid_has_its_own_ids_and_bad_block_is_refused(shared_data):
    adata = read_her2st(shared_data("her2st"), "C3")
    shifted = region_of_spots(adata, offset=(1, 2))
    x, y = adata.obs["array_x"].to_numpy(), adata.obs["array_y"].to_numpy()
    assert list(shifted) == [f"C3_{(a + 1) // 3}_{(b + 2) // 3}~12" for a, b in zip(x, y)]
    with pytest.raises(EmoError, match="block=0"):
        region_of_spots(adata, block=0)
    with pytest.raises(EmoError, match="no region has ≥ 100 spots"):
        region_pseudobulk(adata, ["ERBB2"], min_spots=100)


def test_region_benchmark_names_the_section_without_an_image(shared_data, tmp_path):
    data = shared_data("her2st")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "her2st_regions.py"), "--data", str(data),
                           "--train", "B4,C2,C3,C4", "--test", "C5,C6", "--genes", str(data / "hist2st_785_genes.txt"),
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2, proc.stderr
    assert "test section C5" in proc.stderr and "C5.jpg" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "regions.csv").exists()
