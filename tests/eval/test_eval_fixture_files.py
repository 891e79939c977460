"""The committed edge-case files are exactly what scripts/make_eval_fixtures.py generates."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("make_eval_fixtures", ROOT / "scripts" / "make_eval_fixtures.py")
make = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    make.write_edge_files(out)
    return out / "edge"


@pytest.mark.parametrize("name", sorted(make.EDGE_FILES))
def test_edge_file_is_reproducible(name, regenerated):
    committed = Path(__file__).parent / "data" / "edge" / f"{name}.jsonl"
    assert (regenerated / f"{name}.jsonl").read_bytes() == committed.read_bytes()
    assert len(committed.read_text().splitlines()) >= 200
