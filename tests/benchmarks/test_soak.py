"""The soak benchmarks (issue 17): the allocator variants of the memory bisect set what they name in the child's
environment and nothing else, bad variant names fail before any child starts, and the soak itself writes a report
whose checks follow from its measured rounds."""

from __future__ import annotations

import json

import pytest

from benchmarks.soak import memory
from benchmarks.soak import run as soak


def test_variant_env_sets_each_flag_and_only_it():
    assert memory.variant_env("stock") == {}
    assert memory.variant_env("st_leap-exits+trim") == {}  # trim acts in the child, not in its environment
    assert memory.variant_env("st_leap-exits+mmap") == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    assert memory.variant_env("stock+arena2+mklmm") == {"MALLOC_ARENA_MAX": "2", "MKL_DISABLE_FAST_MM": "1"}
    assert memory.variant_env("stock+jemalloc", jemalloc="/opt/libjemalloc.so.2") == {"LD_PRELOAD": "/opt/libjemalloc.so.2"}
    tuned = memory.variant_env("stock+jemalloc+jemtune", jemalloc="/opt/libjemalloc.so.2")
    assert tuned["LD_PRELOAD"] == "/opt/libjemalloc.so.2" and "dirty_decay_ms" in tuned["MALLOC_CONF"]
    with pytest.raises(ValueError, match="add \\+jemalloc"):
        memory.variant_env("stock+jemtune")


@pytest.mark.parametrize(
    ("variant", "match"),
    [("stok", "Unknown variant base 'stok'"), ("stock+arena3", r"Unknown variant flag\(s\) \['arena3'\]")],
)
def test_bad_variant_names_fail_before_any_child_runs(variant, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        memory.main(["--variants", f"stock,{variant}", "--out", str(tmp_path / "memory")])
    assert not (tmp_path / "memory.json").exists()


def test_summarise_measures_growth_from_the_end_of_warmup():
    rows = [
        {"rss_mib": rss, "python_objects": 100 + i, "torch_tensors": 5, "rss_mib_after_trim": rss - 50}
        for i, rss in enumerate([500.0, 900.0, 1000.0, 1100.0])
    ]
    summary = memory.summarise(rows, warmup=2)
    assert summary["rss_mib_after_warmup"] == 1000.0
    assert summary["rss_growth"] == pytest.approx(0.10)
    assert summary["rss_growth_after_trim"] == pytest.approx(1050 / 950 - 1)
    assert summary["python_objects_growth"] == 1
    assert summary["torch_tensors_growth"] == 0


def test_speed_compares_variants_within_each_repeat():
    """texts/s per batch size after warm-up; the ratio is taken within a repeat, so a repeat that ran slow for
    every variant (machine noise) does not move it."""

    def rows(seconds_b1, seconds_b8):  # 1 warm-up round each, then 2 timed rounds per batch size
        return [{"batch_size": b, "seconds": t, "round_texts": 100}
                for b, t in [(1, 99.0), (8, 99.0), (1, seconds_b1), (8, seconds_b8), (1, seconds_b1), (8, seconds_b8)]]

    runs = {"glibc": [rows(2.0, 1.0), rows(4.0, 2.0)], "jemalloc": [rows(1.0, 1.0), rows(2.0, 2.0)]}
    out = memory.speed(runs, warmup=2)
    assert out["glibc"]["batch 1"] == {"texts_per_second": pytest.approx(37.5), "ratio_to_first": 1.0}
    assert out["jemalloc"]["batch 1"]["ratio_to_first"] == pytest.approx(2.0)
    assert out["jemalloc"]["batch 8"]["ratio_to_first"] == pytest.approx(1.0)
    assert out["jemalloc"]["batch 8"]["texts_per_second"] == pytest.approx(75.0)


def test_soak_report_follows_its_rounds(smooth_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    out = tmp_path / "soak"
    code = soak.main(["--model", smooth_bert_dir, "--texts", "48", "--round-texts", "8", "--batch-sizes", "1,4",
                      "--thresholds", "0.9,none", "--threads", "1", "--max-rss-growth", "10", "--throughput-band", "100",
                      "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["results"]["rounds"]
    assert [(r["batch_size"], r["exit_threshold"]) for r in rows] == [(1, 0.9), (4, 0.9), (1, None), (4, None), (1, 0.9), (4, 0.9)]
    assert result["run_info"]["warmup_rounds"] == 2 and result["run_info"]["rounds_done"] == 6
    baseline, end = rows[2]["rss_mib"], rows[-1]["rss_mib"]
    assert result["checks"]["rss_growth_after_warmup"] == pytest.approx((end - baseline) / baseline)
    assert all(r["exit_rate"] == 0.0 for r in rows if r["exit_threshold"] is None)
    # generous limits: both checks pass and the exit code says so
    assert code == 0 and result["checks"]["rss_growth_ok"] and result["checks"]["throughput_ok"]
    # the allocator settings it ran under are recorded (the same code grows or not depending on them)
    assert result["run_info"]["allocator_env"] == {"MALLOC_ARENA_MAX": "2"}
    assert "`MALLOC_ARENA_MAX=2`" in out.with_suffix(".md").read_text()
    assert "pass" in out.with_suffix(".md").read_text()


def test_memory_bisect_runs_each_variant_in_its_own_environment(smooth_bert_dir, tmp_path, monkeypatch):
    """End to end on a tiny model: each variant runs in a fresh child under exactly its flags' environment, and the
    report holds every round's RSS and seconds."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    out = tmp_path / "memory"
    memory.main(["--model", smooth_bert_dir, "--variants", "stock,st_leap-exits+mmap", "--rounds", "3",
                 "--round-texts", "6", "--batch-sizes", "1,4", "--warmup-rounds", "1", "--threads", "1",
                 "--fresh-texts", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())["results"]
    assert result["st_leap-exits+mmap"]["env"] == {"MALLOC_MMAP_THRESHOLD_": "131072"}
    for variant in ("stock", "st_leap-exits+mmap"):
        rounds = result[variant]["rounds"]
        assert [r["batch_size"] for r in rounds] == [1, 4, 1]
        assert all(r["seconds"] > 0 and r["rss_mib"] > 0 for r in rounds)
    assert [r["exit_threshold"] for r in result["st_leap-exits+mmap"]["rounds"]] == [0.9, 0.9, 0.95]
    # speed after the 1 warm-up round: stock's only batch-1 round left is round 2
    stock_round = result["stock"]["rounds"][2]
    assert result["stock"]["speed"]["batch 1"]["texts_per_second"] == pytest.approx(6 / stock_round["seconds"])
    assert "| st_leap-exits+mmap |" in out.with_suffix(".md").read_text()


def test_plot_draws_one_line_per_soak_run_and_per_bisect_variant(tmp_path):
    from benchmarks.soak import plot as soak_plot

    rounds = [{"round": i, "batch_size": b, "rss_mib": 700.0 + i} for i, b in enumerate([1, 64, 1, 64])]
    soak_file = tmp_path / "soak.json"
    soak_file.write_text(json.dumps({"run_info": {"allocator_env": {"LD_PRELOAD": "/x/libjemalloc.so.2"}},
                                     "results": {"rounds": rounds}}))
    bisect_file = tmp_path / "memory.json"
    bisect_file.write_text(json.dumps({"results": {"stock": {"rounds": rounds}, "stock+mmap": {"rounds": rounds}}}))
    assert list(soak_plot.series(soak_file)) == ["soak, jemalloc (soak)"]
    assert list(soak_plot.series(bisect_file)) == ["stock", "stock+mmap"]
    out = soak_plot.plot([str(soak_file), str(bisect_file)], tmp_path / "rss.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
