"""`zamba2vl bench`: the help, and a smoke run of a section with tiny shapes (zamba2vl only, 1 thread)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from zamba2vl import cli


def test_bench_help_explains_every_section_and_the_baseline_venv(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in ("ttft", "shapes", "decode", "peak", "image", "memory", ".bench-venv", "--transformers-python",
                 "--long", "--threads", "--dtype", "--repeats", "--out"):
        assert word in out, word


def test_top_level_help_lists_bench(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "bench" in capsys.readouterr().out


def test_bench_rejects_an_unknown_section(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "nonsense"])
    assert e.value.code == 2
    assert "unknown section" in capsys.readouterr().err


def test_bench_ttft_smoke_run_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = cli.main(["bench", "ttft", "--tiny", "--threads", "1", "--lengths", "64", "--repeats", "1",
                   "--peak-sizes", "32", "--bandwidth-mib", "4", "--out", str(out),
                   "--transformers-python", str(tmp_path / "no-such-python")])
    assert rc == 0
    printed = capsys.readouterr().out
    # without the baseline venv, our side runs and the output says the baselines were skipped
    assert "skipped" in printed and "zamba2vl's side only" in printed
    report = json.loads((out / "ttft.json").read_text())
    assert report["section"] == "ttft"
    cond = report["conditions"]
    for key in ("cpu", "cpu_flags", "threads", "dtype", "date", "command", "load_average_at_start",
                "load_average_at_end", "machine_peak"):
        assert key in cond, key
    assert cond["threads"] == 1 and cond["dtype"] == "bfloat16" and "bench ttft" in cond["command"]
    assert cond["machine_peak"]["gflops"]["float32"] > 0 and cond["machine_peak"]["bandwidth"]["read_gbs"] > 0
    assert report["systems"] == {"ours": "zamba2vl"}
    assert [r["tokens"] for r in report["results"]] == [64]
    for row in report["results"]:
        ours = row["ours"]
        assert ours["median_s"] > 0 and all(t > 0 for t in ours["times_s"])
        assert ours["flops"]["total"] > 0 and ours["gflops"] > 0 and ours["peak_rss_bytes"] > 0
        assert ours["threads"] == 1
    with Image.open(out / "ttft.png") as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_crossover_length_is_interpolated_on_log_axes():
    from zamba2vl.cli import _bench_suite_path
    import importlib.util
    import sys

    sys.path.insert(0, str(_bench_suite_path().parent))
    spec = importlib.util.spec_from_file_location("bench_suite_for_test", _bench_suite_path())
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite
    spec.loader.exec_module(suite)
    ours = {1024: 2.0, 4096: 4.0, 16384: 8.0}
    llama = {1024: 1.0, 4096: 4.0 * 1.0, 16384: 16.0}
    # ratio 2 at 1k, 1 at 4k, 0.5 at 16k: ours is faster past 4k (the ratio reaches 1 exactly there)
    assert suite.crossover(ours, llama)["length"] == 4096
    assert suite.crossover({1: 1.0, 4: 1.0}, {1: 2.0, 4: 3.0})["length"] is None  # faster everywhere
    c = suite.crossover({1024: 2.0, 2048: 1.0}, {1024: 1.0, 2048: 2.0})  # ratio 2 -> 0.5: crosses at the midpoint
    assert c["length"] == 1448 and "faster from" in c["summary"]
    assert suite.predict([(1024, 1.0), (2048, 4.0)], 4096) == 16.0  # quadratic growth continues
    assert suite.predict([(1024, 1.0)], 4096) == 4.0  # one point: linear
