"""The serving benchmarks (``benchmarks.serving``) run end to end on a tiny model and a tiny BEIR folder, each against
a real ``st-leap serve`` subprocess on 127.0.0.1, with bounds small enough for CI: the lean path gives encode_query's
embeddings, the load test answers every request, the soak samples the server's memory, the fuzz run never sees a
5xx, a server killed with SIGKILL comes back with bit-equal embeddings, and the end-to-end search ranks each query in
FAISS and LanceDB as a numpy brute force does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import st_leap
from benchmarks.serving import _server, fuzz, lean, load, restart, search, soak
from st_leap.backends import read_export_info
from tests.conftest import SENTENCES

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir, tmp_path_factory):
    """A saved tiny st_leap model, its int8 whole-graph export and a BEIR folder of the test sentences."""
    from st_leap.backends import export

    root = tmp_path_factory.mktemp("serving_bench")
    model = st_leap.from_pretrained(tiny_bert_dir, device="cpu")
    model.save(str(root / "torch"))
    export(model, root / "int8", "onnx", quantize="int8")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    lines = [json.dumps({"_id": f"d{i}", "title": "", "text": text}) for i, text in enumerate(SENTENCES)]
    (beir / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    lines = [json.dumps({"_id": f"q{i}", "text": text}) for i, text in enumerate(SENTENCES)]
    (beir / "queries.jsonl").write_text("\n".join(lines) + "\n")
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(SENTENCES)))
    )
    return {"torch": str(root / "torch"), "int8": str(root / "int8"), "beir": str(beir)}


def _common(tmp_path, name: str) -> list[str]:
    return ["--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / name)]


def _read(tmp_path, name: str) -> dict:
    assert (tmp_path / f"{name}.md").read_text().startswith("# ")
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.parametrize("module", [lean, load, soak, fuzz, restart, search])
def test_every_script_has_help(module, capsys):
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0 and "--out" in capsys.readouterr().out


def test_model_specs_name_and_export(tiny, tmp_path):
    assert _server.split_spec("qe=int8:runs/qe") == ("qe", "int8:runs/qe")
    assert _server.split_spec("int8:runs/qe") == ("qe-int8", "int8:runs/qe")
    assert _server.split_spec("runs/model") == ("model", "runs/model")
    with pytest.raises(ValueError, match="NAME=SOURCE"):
        _server.split_spec("x:query=runs/model")
    made = _server.prepare_model(f"t8=int8:{tiny['torch']}", tmp_path)
    assert made.path == str(tmp_path / "exports" / "t8") and read_export_info(made.path)["quantize"] == "int8"
    stamp = (tmp_path / "exports" / "t8" / "model.onnx").stat().st_mtime_ns
    assert _server.prepare_model(f"t8=int8:{tiny['torch']}", tmp_path).path == made.path  # reused, not made again
    assert (tmp_path / "exports" / "t8" / "model.onnx").stat().st_mtime_ns == stamp


def test_lean_bench_times_both_paths_and_they_agree(tiny, tmp_path):
    threads = torch.get_num_threads()
    try:
        code = lean.main(
            [
                "--models",
                f"t={tiny['torch']}",
                f"t8={tiny['int8']}",
                "--tasks",
                tiny["beir"],
                "--queries",
                "4",
                "--rounds",
                "2",
                "--warmup",
                "1",
                *_common(tmp_path, "lean"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    result = _read(tmp_path, "lean")
    rows = {row["model"]: row for row in result["results"]}
    assert set(rows["t"]["paths"]) == {"encode_query"} and "lean_speedup" not in rows["t"]
    assert set(rows["t8"]["paths"]) == {"encode_query", "lean"}
    assert rows["t8"]["max_abs_diff"] <= 1e-6 and result["lean_equal"]
    for row in rows.values():
        for stats in row["paths"].values():
            assert 0 < stats["graph_us"]["median"] < stats["total_us"]["median"]
            assert 0 < stats["outside_share"]["median"] < 1
    assert rows["t8"]["paths"]["lean"]["tokenizer_us"]["median"] > 0
    assert rows["t8"]["lean_speedup"]["median"] > 0


def test_load_answers_every_request(tiny, tmp_path):
    code = load.main(
        [
            "--models",
            f"t8={tiny['int8']}",
            "--tasks",
            tiny["beir"],
            "--concurrency",
            "1,2",
            "--requests",
            "3",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--threads",
            "1",
            *_common(tmp_path, "load"),
        ]
    )
    assert code == 0
    result = _read(tmp_path, "load")
    assert [(row["clients"], row["ok"], row["errors"], row["status_503"]) for row in result["summary"]] == [
        (1, 3, 0, 0),
        (2, 6, 0, 0),
    ]
    assert all(row["p50_ms"] > 0 and row["throughput_rps"] > 0 for row in result["summary"])
    assert result["servers"]["t8"]["lean_roles"] == ["query", "document", "default"]
    assert result["errors"] == 0


def test_soak_samples_the_servers_memory(tiny, tmp_path):
    code = soak.main(
        [
            "--model",
            f"t8={tiny['int8']}",
            "--tasks",
            tiny["beir"],
            "--minutes",
            "0.05",
            "--interval",
            "1",
            "--clients",
            "2",
            "--document-batch",
            "3",
            "--threads",
            "1",
            *_common(tmp_path, "soak"),
        ]
    )
    assert code == 0
    result = _read(tmp_path, "soak")
    samples, summary = result["samples"], result["summary"]
    assert len(samples) >= 3 and samples[0]["t_s"] == 0 and samples[-1]["t_s"] >= 2.5
    assert summary["errors"] == 0 and summary["requests_ok"] > 0 and summary["texts"] > summary["requests_ok"]
    assert all(s["rss_mib"] > 10 for s in samples) and summary["rss_max_mib"] >= summary["rss_first_mib"]
    assert summary["rss_slope_mib_per_min"] is not None and not result["server_died"]


def test_fuzz_never_sees_a_server_error(tiny, tmp_path):
    pytest.importorskip("hypothesis")
    code = fuzz.main(
        ["--model", f"t8={tiny['int8']}", "--examples", "10", "--threads", "1", *_common(tmp_path, "fuzz")]
    )
    assert code == 0
    result = _read(tmp_path, "fuzz")["results"]
    assert result["sent"] == 10 and sum(result["statuses"].values()) == 10
    assert result["server_errors"] == result["health_failures"] == result["no_answer"] == result["bad_200"] == 0
    assert all(status.isdigit() and int(status) < 500 for status in result["statuses"])


def test_restart_after_kill_answers_the_same_embeddings(tiny, tmp_path):
    code = restart.main(
        [
            "--model",
            f"t8={tiny['int8']}",
            "--tasks",
            tiny["beir"],
            "--clients",
            "2",
            "--kill-after",
            "1",
            "--after",
            "1",
            "--probes",
            "3",
            "--threads",
            "1",
            *_common(tmp_path, "restart"),
        ]
    )
    assert code == 0
    result = _read(tmp_path, "restart")["results"]
    assert set(result["probes"]) == {"query", "document"}
    assert all(probe["bit_equal"] and probe["max_abs_diff"] == 0 for probe in result["probes"].values())
    assert result["failed_outside_outage"] == 0 and result["requests"]["after"]["ok"] > 0
    assert result["requests"]["before"]["ok"] > 0 and 0 < result["restart_to_healthy_s"] <= result["outage_s"]


def test_restart_classifies_requests_by_the_outage():
    attempts = [
        (0.0, 0.5, "ok"),
        (0.9, 1.1, "RemoteDisconnected"),
        (1.2, 1.3, "ConnectionRefusedError"),
        (2.9, 3.05, "ok"),
        (3.2, 3.3, "ok"),
        (3.4, 3.5, "HTTP 500"),
    ]
    phases = restart.classify(attempts, kill=1.0, healthy=3.0)
    assert phases["before"] == {"ok": 1, "failed": 0, "failures": {}}
    assert phases["outage"]["failed"] == 2 and phases["outage"]["ok"] == 1
    assert phases["after"] == {"ok": 1, "failed": 1, "failures": {"HTTP 500": 1}}


def test_load_summary_compares_models_within_a_round():
    def cell(model, rnd, rps, p50):
        return {
            "model": model,
            "task": "t",
            "clients": 1,
            "round": rnd,
            "ok": 3,
            "status_503": 0,
            "errors": 0,
            "capped": False,
            "p50_ms": p50,
            "p99_ms": p50,
            "throughput_rps": rps,
            "mean_batch_texts": 1.0,
        }

    cells = [cell("a", 0, 100, 10), cell("b", 0, 200, 5), cell("a", 1, 50, 20), cell("b", 1, 100, 10)]
    rows = {row["model"]: row for row in load.summarise(cells, "a")}
    assert rows["b"]["throughput_vs_first"] == pytest.approx(2.0) and rows["b"]["p50_vs_first"] == pytest.approx(0.5)
    assert rows["a"]["throughput_rps"] == pytest.approx(75) and rows["b"]["ok"] == 6


def test_search_ranks_like_brute_force_and_counts_every_query(tiny, tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("lancedb")
    code = search.main(
        [
            "--models",
            f"t={tiny['torch']}",
            f"t8={tiny['int8']}",
            "--tasks",
            tiny["beir"],
            "--index-model",
            tiny["torch"],
            "--queries",
            "6",
            "--top-k",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--per-query",
            *_common(tmp_path, "search"),
        ]
    )
    assert code == 0
    result = _read(tmp_path, "search")
    assert result["errors"] == 0
    assert result["tasks"]["beir"]["documents"] == len(SENTENCES) and result["tasks"]["beir"]["queries"] == 6
    rows = result["summary"]
    assert [(row["model"], row["task"], row["store"]) for row in rows] == [
        ("t", "beir", "faiss"),
        ("t", "beir", "lancedb"),
        ("t8", "beir", "faiss"),
        ("t8", "beir", "lancedb"),
    ]
    index = np.load(tmp_path / "work" / "index_beir.npy")
    ids = [f"d{i}" for i in range(len(SENTENCES))]
    assert index.shape == (len(SENTENCES), 32)
    for row in rows:
        assert row["queries"] == 6 and row["errors"] == 0 and not row["capped"] and row["exact"] == 6
        assert 0 < row["encoder_p50_ms"] < row["total_p50_ms"] and 0 < row["store_p50_ms"] < row["total_p50_ms"]
        assert row["total_p50_ms"] <= row["total_p99_ms"] and 0 < row["encoder_share"] < 1
        records = result["per_query"][row["model"]]["beir"]
        assert [r["query_id"] for r in records] == [f"q{i}" for i in range(6)]
        scores = []
        for record in records:
            query = np.asarray(record["vector"], dtype=np.float32)
            expected = [ids[i] for i in np.argsort(-(index @ query), kind="stable")[:3]]
            assert record[f"{row['store']}_ids"] == expected  # exact search in the store = numpy's brute force
            own = record["query_id"].replace("q", "d")  # each test query's one relevant document
            rank = expected.index(own) if own in expected else None
            scores.append(0.0 if rank is None else 1.0 / np.log2(rank + 2))
        assert row["ndcg@3"] == pytest.approx(100 * np.mean(scores))
    assert "| t8 | beir | lancedb | 6 |" in (tmp_path / "search.md").read_text()
