"""Ray Data recipe (issue 16): a local Ray instance with 2 actors embeds a few hundred texts with exits, and the
embeddings and exit layers equal single-process encode."""

from __future__ import annotations

import numpy as np
import pytest

import st_leap
from tests.conftest import SENTENCES
from tests.test_modules import early_model, mixed_threshold

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_data_map_batches_equals_single_process(local_ray, smooth_bert_dir):
    from st_leap.ray_data import EarlyExitEmbedder

    probe = early_model(smooth_bert_dir, exit_min_layer=2)
    theta = mixed_threshold(probe, SENTENCES, min_layer=2)
    texts = [f"{s} {i % 7}" if i % 3 else s for i, s in enumerate(SENTENCES * 30)]  # 300 texts
    single = st_leap.encode_with_exits(probe, texts, exit_threshold=theta, exit_min_layer=2, batch_size=8)
    assert 0 < single.stats.exit_rate < 1

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(
        EarlyExitEmbedder,
        fn_constructor_kwargs={"model": smooth_bert_dir, "exit_threshold": theta, "exit_min_layer": 2,
                               "encode_batch_size": 8, "num_threads": 1},
        batch_size=64,
        concurrency=2,
        num_cpus=1,
    )
    rows = sorted(ds.take_all(), key=lambda row: row["id"])
    assert [row["text"] for row in rows] == texts
    np.testing.assert_allclose(np.stack([row["embedding"] for row in rows]), single.embeddings, atol=1e-5)
    assert [int(row["exit_layer"]) for row in rows] == single.exit_layers.tolist()


def test_embedder_rejects_unknown_settings_and_missing_column(smooth_bert_dir):
    from st_leap.ray_data import EarlyExitEmbedder

    with pytest.raises(ValueError, match="exit_treshold"):
        EarlyExitEmbedder(smooth_bert_dir, exit_treshold=0.9)
    embedder = EarlyExitEmbedder(smooth_bert_dir)
    with pytest.raises(KeyError, match="'text' not in the batch"):
        embedder({"sentence": np.array(["a dog"])})
