"""hetserve catalog --import-skypilot: prices and instances from a SkyPilot vms.csv."""

import json
from datetime import date

import pytest
import yaml

from hetserve.catalog import load_catalog
from hetserve.catalog.skypilot import (
    FRACTIONAL,
    NO_ACCELERATOR,
    NO_PRICE,
    OTHER_REGION,
    cloud_for,
    read_vms_csv,
    to_catalog_yaml,
)
from hetserve.errors import HetserveError

from .conftest import assert_bad_input

HEADER = ("InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,"
          "SpotPrice,Region,AvailabilityZone\n")


def gpu(name: str, count: float, mib: int) -> str:
    """GpuInfo as SkyPilot writes it (a Python dict's repr, quoted)."""
    return (f"\"{{'Gpus': [{{'Name': '{name}', 'Manufacturer': 'NVIDIA', 'Count': {count}, "
            f"'MemoryInfo': {{'SizeInMiB': {mib}}}}}], 'TotalGpuMemoryInMiB': "
            f"{int(mib * count)}}}\"")


L4, A10G = gpu("L4", 1, 22888), gpu("A10G", 1, 22888)
ROWS = [  # modelled on SkyPilot's aws vms.csv (us-east-1 prices)
    "m5.large,,,2.0,8.0,,0.096,0.0376,us-east-1,us-east-1a",  # CPU
    f"g6.xlarge,L4,1.0,4.0,16.0,{L4},0.8048,0.3495,us-east-1,us-east-1a",
    f"g6.xlarge,L4,1.0,4.0,16.0,{L4},0.8048,0.3312,us-east-1,us-east-1b",
    f"g6.xlarge,L4,1.0,4.0,16.0,{L4},0.8048,0.3601,us-east-1,us-east-1c",
    f"g6.12xlarge,L4,4.0,48.0,192.0,{gpu('L4', 4, 22888)},4.6016,1.7233,us-east-1,us-east-1a",
    f"g6.12xlarge,L4,4.0,48.0,192.0,{gpu('L4', 4, 22888)},4.6016,1.6801,us-east-1,us-east-1b",
    "g6f.large,L4,0.125,2.0,8.0,,0.2,0.09,us-east-1,us-east-1a",  # an eighth of an L4
    f"g5.xlarge,A10G,1.0,4.0,16.0,{A10G},1.006,0.4523,us-east-1,us-east-1a",
    f"g5.12xlarge,A10G,4.0,48.0,192.0,{gpu('A10G', 4, 22888)},5.672,,us-east-1,us-east-1a",
    f"g5.xlarge,A10G,1.0,4.0,16.0,{A10G},1.006,0.3921,us-west-2,us-west-2a",
    f"p4de.24xlarge,A100-80GB,8.0,96.0,1152.0,{gpu('A100', 8, 81920)},40.96606,16.3864,"
    "us-east-1,us-east-1c",
    f"p5.48xlarge,H100,8.0,192.0,2048.0,{gpu('H100', 8, 81559)},98.32,,us-east-1,us-east-1a",
    f"p5.48xlarge,H100,8.0,192.0,2048.0,{gpu('H100', 8, 81559)},98.32,39.328,us-east-1,"
    "us-east-1b",
    "g6e.xlarge,L40S,1.0,4.0,32.0,,,,us-east-1,us-east-1a",  # no price
    "inf1.xlarge,Inferentia,1.0,4.0,8.0,,0.228,0.0842,us-east-1,us-east-1a",
    "inf1.6xlarge,Inferentia,4.0,24.0,48.0,,1.18,0.4326,us-east-1,us-east-1b",
]


@pytest.fixture
def vms(tmp_path):
    folder = tmp_path / "aws"
    folder.mkdir()
    path = folder / "vms.csv"
    path.write_text(HEADER + "\n".join(ROWS) + "\n")
    return path


def by_name(result):
    return {i.name: i for i in result.imported}


def test_prices_offers_and_reports_in_one_region(vms):
    result = read_vms_csv(vms, "aws", region="us-east-1")
    got = by_name(result)
    assert list(got) == ["L4", "A10G", "A100-80GB", "H100-SXM"]  # catalog order; L40S unpriced
    l4 = got["L4"]
    assert l4.usd_per_hour == pytest.approx(min(0.8048 / 1, 4.6016 / 4))
    assert l4.spot_usd_per_hour == pytest.approx(min(0.3312 / 1, 1.6801 / 4))
    assert (l4.cheapest.instance_type, l4.cheapest.gpus) == ("g6.xlarge", 1)
    # one offer per instance type and region: the three g6.xlarge zones are one offer
    assert [(o.instance_type, o.gpus, o.usd_per_hour, o.spot_usd_per_hour) for o in l4.offers] \
        == [("g6.xlarge", 1, 0.8048, 0.3312), ("g6.12xlarge", 4, 4.6016, 1.6801)]
    assert {(o.cloud, o.region) for o in l4.offers} == {("aws", "us-east-1")}
    a10g = got["A10G"]
    assert a10g.usd_per_hour == pytest.approx(1.006)
    assert a10g.spot_usd_per_hour == pytest.approx(0.4523)  # us-west-2's 0.3921 left out
    assert [o.spot_usd_per_hour for o in a10g.offers] == [0.4523, None]  # g5.12xlarge: none
    assert got["A100-80GB"].usd_per_hour == pytest.approx(40.96606 / 8)
    assert got["A100-80GB"].spot_usd_per_hour == pytest.approx(16.3864 / 8)
    h100 = got["H100-SXM"]  # SkyPilot's "H100": the first catalog type of that name
    assert h100.skypilot == "H100"
    assert (h100.usd_per_hour, h100.spot_usd_per_hour) == (pytest.approx(12.29),
                                                           pytest.approx(4.916))
    assert [(o.instance_type, o.gpus) for o in h100.offers] == [("p5.48xlarge", 8)]
    assert result.unmapped == {"Inferentia": 2}
    assert result.skipped == {NO_ACCELERATOR: 1, FRACTIONAL: 1, OTHER_REGION: 1, NO_PRICE: 1}
    assert result.rows == len(ROWS)


def test_all_regions(vms):
    got = by_name(read_vms_csv(vms, "aws"))
    a10g = got["A10G"]
    assert len(a10g.offers) == 3
    assert a10g.spot_usd_per_hour == pytest.approx(0.3921)
    assert {o.region for o in a10g.offers} == {"us-east-1", "us-west-2"}
    assert len(got["L4"].offers) == 2


def test_written_yaml_loads_as_catalog_override(vms, tmp_path):
    result = read_vms_csv(vms, "aws", region="us-east-1")
    text = to_catalog_yaml(result, today=date(2025, 7, 1))
    assert text.startswith("# Imported by hetserve catalog --import-skypilot on 2025-07-01\n")
    assert f"# from {vms} (cloud aws, region us-east-1)." in text
    assert "Inferentia (2 rows)" in text
    data = yaml.safe_load(text)
    rows = data["accelerators"]
    assert {k for r in rows for k in r} == {"name", "usd_per_hour", "spot_usd_per_hour",
                                            "offers"}
    assert data["only"] is True  # a cloud's catalog: plans use what it offers, nothing else
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    bundled, cat = load_catalog(), load_catalog(extra=path)
    l4 = cat.get("L4")
    assert l4.usd_per_hour == pytest.approx(0.8048)
    assert l4.spot_usd_per_hour == pytest.approx(0.3312)
    assert l4.memory_gb == bundled.get("L4").memory_gb  # other fields kept
    assert cat.get("H100-SXM").usd_per_hour == pytest.approx(12.29)
    assert cat.get("A10G").offers[1].spot_usd_per_hour is None
    assert sorted(a.name for a in cat) == sorted(r["name"] for r in rows)
    with pytest.raises(HetserveError, match="unknown accelerator 'T4'"):
        cat.get("T4")  # not offered in the file: not plannable
    path.write_text(text.replace("only: true", "only: false"))
    both = load_catalog(extra=path)  # the bundled types too, at their reference prices
    assert both.get("T4").usd_per_hour == bundled.get("T4").usd_per_hour
    assert both.get("L4").usd_per_hour == pytest.approx(0.8048)
    assert len(both) == len(bundled)
    path.write_text("only: yes please\naccelerators: []\n")
    with pytest.raises(HetserveError, match="only: expected true or false"):
        load_catalog(extra=path)
    path.write_text("only: true\naccelerators: []\n")
    with pytest.raises(HetserveError, match="only: true, but the file lists no accelerators"):
        load_catalog(extra=path)
    path.write_text(text)
    cat = load_catalog(extra=path)
    assert l4.offer_for(1).instance_type == "g6.xlarge"
    assert l4.offer_for(2).instance_type == "g6.12xlarge"  # smallest that holds 2
    assert l4.offer_for(4).instance_type == "g6.12xlarge"
    assert l4.offer_for(8) is None
    assert cat.get("H100-SXM").offer_for(8).instance_type == "p5.48xlarge"


def test_shared_name_goes_to_the_closest_memory(tmp_path):
    extra = tmp_path / "names.yaml"  # A100-40GB also answering to SkyPilot's "A100-80GB"
    extra.write_text("accelerators:\n  - name: A100-40GB\n    names: {skypilot: A100-80GB}\n")
    cat = load_catalog(extra=extra)
    csv = tmp_path / "vms.csv"
    csv.write_text(HEADER
                   + f"a2-ultragpu-1g,A100-80GB,1,12,170,{gpu('A100', 1, 81920)},5.07,1.6,r,z\n"
                   + f"a2-highgpu-1g,A100-80GB,1,12,85,{gpu('A100', 1, 40960)},3.67,1.1,r,z\n")
    got = by_name(read_vms_csv(csv, "gcp", catalog=cat))
    assert got["A100-40GB"].cheapest.instance_type == "a2-highgpu-1g"
    assert got["A100-80GB"].cheapest.instance_type == "a2-ultragpu-1g"


@pytest.mark.parametrize("text,message", [
    ("InstanceType,AcceleratorName,AcceleratorCount,Price\n",
     "vms.csv: line 1: missing column 'Region'"),
    (HEADER + ROWS[1] + "\n" + ROWS[2].replace("0.8048", "abc") + "\n",
     "vms.csv: line 3: column 'Price': expected a number >= 0, got 'abc'"),
    (HEADER + ROWS[1].replace("0.3495", "-1") + "\n",
     "vms.csv: line 2: column 'SpotPrice': expected a number >= 0, got '-1'"),
    (HEADER + ROWS[1] + ",extra\n", "vms.csv: line 2: 11 fields, the header has 10"),
    ("", "empty file"),
    (HEADER + ROWS[14] + "\n", "no priced row names a catalog accelerator's SkyPilot name; "
     "other accelerator names: Inferentia (1 row)"),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "vms.csv"
    path.write_text(text)
    with pytest.raises(HetserveError) as err:
        read_vms_csv(path, "aws")
    assert message in str(err.value)


def test_unknown_region_lists_the_regions(vms):
    with pytest.raises(HetserveError, match="no rows in region 'eu-west-1'; regions in the "
                       "file: us-east-1, us-west-2"):
        read_vms_csv(vms, "aws", region="eu-west-1")


def test_cloud_from_folder(vms, tmp_path):
    assert cloud_for(vms) == "aws"
    assert cloud_for(vms, "gcp") == "gcp"
    with pytest.raises(HetserveError, match="cannot tell the cloud from folder .*give --cloud"):
        cloud_for(tmp_path / "vms.csv")


def test_cli_import_then_catalog(run_cli, vms, tmp_path):
    out = tmp_path / "catalog.yaml"
    res = run_cli("catalog", "--import-skypilot", vms, "--region", "us-east-1", "--out", out)
    assert res.code == 0, res.err
    for text in ("SkyPilot prices", "L4", "0.8048", "0.3312", "g6.xlarge", "p5.48xlarge",
                 "12.29", "not in the catalog: Inferentia (2 rows)", f"wrote {out}"):
        assert text in res.out
    res = run_cli("catalog", "--catalog", out, "--json")
    assert res.code == 0, res.err
    rows = {r["name"]: r for r in json.loads(res.out)}
    assert rows["L4"]["usd_per_hour"] == pytest.approx(0.8048)
    assert rows["L4"]["spot_usd_per_hour"] == pytest.approx(0.3312)
    assert [o["instance_type"] for o in rows["L4"]["offers"]] == ["g6.xlarge", "g6.12xlarge"]
    res = run_cli("catalog", "--catalog", out)
    assert res.code == 0 and "0.805" in res.out and "0.331" in res.out
    res = run_cli("catalog", "--import-skypilot", vms, "--json")  # no --out: nothing written
    assert res.code == 0, res.err
    assert json.loads(res.out)["unmapped"] == {"Inferentia": 2}


def test_cli_bad_input(run_cli, vms, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + ROWS[1].replace("0.8048", "x") + "\n")
    assert_bad_input(run_cli("catalog", "--import-skypilot", bad, "--cloud", "aws"),
                     needs=["line 2", "Price"], scrub=[tmp_path])
    assert_bad_input(run_cli("catalog", "--import-skypilot", bad), needs=["--cloud"])
    assert_bad_input(run_cli("catalog", "--import-skypilot", vms, "--region", "mars"),
                     needs=["mars", "us-east-1"])
    assert_bad_input(run_cli("catalog", "--region", "us-east-1"), needs=["--import-skypilot"])
    assert_bad_input(run_cli("catalog", "--import-skypilot", vms, "--out", tmp_path / "no/x"),
                     needs=["--out"])
