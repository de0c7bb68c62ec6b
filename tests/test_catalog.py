import csv

import pytest

from hetserve.catalog import load_catalog, parse_assignments
from hetserve.errors import HetserveError

from .conftest import SHARED

REFERENCE = SHARED / "data" / "reference" / "accelerators.csv"


def test_bundled_catalog_has_every_reference_row(catalog):
    if not REFERENCE.exists():
        assert len(catalog) == 19
        return
    rows = list(csv.DictReader(REFERENCE.open()))
    assert len(catalog) == len(rows) == 19
    for row in rows:
        acc = catalog.get(row["name"])
        assert acc.kind == row["kind"]
        assert acc.memory_gb == float(row["memory_gb"])
        assert acc.memory_bw_gbs == float(row["memory_bw_gbs"])
        assert acc.bf16_tflops == float(row["bf16_dense_tflops"])
        assert acc.fp8_tflops == (float(row["fp8_dense_tflops"]) if row["fp8_dense_tflops"]
                                  else None)
        assert acc.usd_per_hour == float(row["usd_per_hour_typical"])
        assert acc.max_per_node == int(row["max_per_node"])
        assert acc.link_gbs == float(row["intra_node_link_gbs_per_dir"])


def test_price_and_availability_overrides(catalog):
    cat = load_catalog(prices={"a10g": 0.5}, available={"H100-SXM": 2})
    assert cat.get("A10G").usd_per_hour == 0.5
    assert cat.availability("H100-SXM") == 2
    assert cat.availability("A10G") is None
    assert catalog.get("A10G").usd_per_hour == 1.01  # the original is untouched


def test_parse_assignments():
    assert parse_assignments(["A10G=1.5,L4=0.7", "T4=0.2"], "--price") == {
        "A10G": 1.5, "L4": 0.7, "T4": 0.2}
    with pytest.raises(HetserveError, match="expected NAME=VALUE"):
        parse_assignments(["A10G"], "--price")
    with pytest.raises(HetserveError, match="expected an integer"):
        parse_assignments(["A10G=x"], "--available", int)


def test_unknown_accelerator_suggests(catalog):
    with pytest.raises(HetserveError, match="did you mean.*H100-SXM"):
        catalog.get("H100-SXN")


def test_user_catalog_overrides_and_extends(tmp_path):
    f = tmp_path / "cat.yaml"
    f.write_text("accelerators:\n  - name: a10g\n    usd_per_hour: 0.42\n")
    assert load_catalog(f).get("A10G").usd_per_hour == 0.42
    f.write_text("accelerators:\n  - name: NewGPU\n    kind: gpu\n    memory_gb: 32\n")
    with pytest.raises(HetserveError, match=r"cat.yaml: accelerator 'NewGPU': missing field"):
        load_catalog(f)
    f.write_text("accelerators:\n  - name: a10g\n    memory_gb: -3\n")
    with pytest.raises(HetserveError, match="memory_gb"):
        load_catalog(f)
    f.write_text("accelerators: [\n")
    with pytest.raises(HetserveError, match="cat.yaml: line"):
        load_catalog(f)
