"""Embedding a large corpus with early exit on Ray Data: a stateful callable for ``Dataset.map_batches``.

Ray Data runs one copy of the callable per actor; each loads the model once, then receives batches of rows and
returns them with two new columns, the embedding and the exit layer of each text. Ray spreads the actors over
the cores and nodes of the cluster; st_leap only supplies the per-batch work (:func:`st_leap.encode_with_exits`).

Example:
    ::

        import ray
        from st_leap.ray_data import EarlyExitEmbedder

        ds = ray.data.read_parquet("s3://bucket/corpus/")            # a "text" column
        ds = ds.map_batches(
            EarlyExitEmbedder,
            fn_constructor_kwargs={"model": "path/to/leap-model", "task": "document", "exit_threshold": 0.95},
            batch_size=256,          # rows per call; the model encodes them in batches of encode_batch_size
            concurrency=4,           # actors (model copies)
            num_cpus=2,              # cores per actor (torch threads)
        )
        ds.write_parquet("s3://bucket/embeddings/")

Needs ``pip install "st-leap[ray]"``. Training at scale stays on ``torchrun`` / ``accelerate`` (see docs/scale_out.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class EarlyExitEmbedder:
    """``map_batches`` callable: adds ``embedding`` (float32, one row per text) and ``exit_layer`` (int) columns.

    Args:
        model: A local folder or Hub id, loaded with :func:`st_leap.from_pretrained` once per actor.
        text_column: The column holding the texts.
        task: ``"query"``, ``"document"`` or ``None`` (plain ``encode``): whose per-role exit settings apply.
        encode_batch_size: ``encode``'s batch size inside each call.
        num_threads: torch threads per actor (default: leave torch's choice; set it to the actor's ``num_cpus``).
        device: Device of the model (default ``"cpu"``).
        normalize_embeddings: As for ``encode``.
        **exit_settings: ``exit_threshold``, ``exit_patience``, ``exit_min_layer``, ``truncate_layers`` (one value
            or per role); left out, the model's saved defaults apply.
    """

    def __init__(
        self,
        model: str,
        *,
        text_column: str = "text",
        task: str | None = None,
        encode_batch_size: int = 32,
        num_threads: int | None = None,
        device: str = "cpu",
        normalize_embeddings: bool = False,
        **exit_settings: Any,
    ) -> None:
        import torch

        from st_leap.model import EXIT_KEYS, from_pretrained

        unknown = sorted(set(exit_settings) - set(EXIT_KEYS))
        if unknown:
            raise ValueError(f"unknown exit setting(s) {unknown}; choose from {list(EXIT_KEYS)}")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.model = from_pretrained(model, device=device)
        self.text_column = text_column
        self.task = task
        self.encode_batch_size = encode_batch_size
        self.normalize_embeddings = normalize_embeddings
        self.exit_settings = exit_settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from st_leap.model import encode_with_exits

        if self.text_column not in batch:
            raise KeyError(f"column {self.text_column!r} not in the batch (columns: {sorted(batch)})")
        texts = [str(text) for text in batch[self.text_column]]
        result = encode_with_exits(
            self.model,
            texts,
            task=self.task,
            batch_size=self.encode_batch_size,
            normalize_embeddings=self.normalize_embeddings,
            show_progress_bar=False,
            **self.exit_settings,
        )
        return {**batch, "embedding": result.embeddings.astype(np.float32), "exit_layer": result.exit_layers}
