"""A length-grouped batch sampler for sentence-transformers' Trainer.

Random batches of short sentences are padded to their longest member: on the NLI training sentences a random
batch of 32 pads to 56 tokens on average, a length-grouped one to 32 (``benchmarks/results/train_batching.md``).
:class:`LengthGroupedBatchSampler` draws batches of similar length (the mega-batch scheme of transformers'
``LengthGroupedSampler``, through its ``get_length_grouped_indices``), so a training step computes on far fewer
tokens. Pass the class to
``SentenceTransformerTrainingArguments(batch_sampler=LengthGroupedBatchSampler)``, or set ``group_by_length:
true`` in a ``st-leap train`` config.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler
from transformers.trainer_pt_utils import get_length_grouped_indices


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """Shuffled batches of texts of similar length.

    Every epoch the dataset is shuffled and cut into mega-batches of ``megabatch_factor * batch_size`` rows; each
    mega-batch is sorted by text length (transformers' ``get_length_grouped_indices``, which also moves the longest
    row to the front) and cut into batches, and the order of all batches is shuffled. Every
    row is used once per epoch (the last, incomplete batch is dropped if ``drop_last``); which rows share a batch
    changes every epoch. A row's length is the character length of its text columns (its string columns not in
    ``valid_label_columns``), a cheap stand-in for its token count.

    Args:
        dataset: The training dataset (a ``datasets.Dataset``).
        batch_size: Rows per batch.
        drop_last: Drop the last incomplete batch.
        valid_label_columns: Label column names; they do not count toward a row's length.
        generator: Random generator for the shuffles (re-seeded with ``seed + epoch`` every epoch).
        seed: Seed of the shuffles.
        megabatch_factor: Batches per mega-batch. Larger groups lengths more tightly but makes the batches of a
            stretch of training more alike; 1 turns the grouping off (plain random batches).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        megabatch_factor: int = 50,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if not isinstance(megabatch_factor, int) or megabatch_factor < 1:
            raise ValueError(f"megabatch_factor must be an int >= 1, got {megabatch_factor!r}")
        self.megabatch_factor = megabatch_factor
        self.lengths = text_lengths(dataset, valid_label_columns)

    def __iter__(self) -> Iterator[list[int]]:
        generator = self.generator or torch.Generator()
        if self.seed is not None:
            generator.manual_seed(self.seed + self.epoch)
        indices = get_length_grouped_indices(
            self.lengths.tolist(), self.batch_size, mega_batch_mult=self.megabatch_factor, generator=generator
        )
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]


def text_lengths(dataset, label_columns: list[str] | None = None) -> torch.Tensor:
    """Summed character length of each row's text columns (string columns not in ``label_columns``)."""
    candidates = [c for c in dataset.column_names if c not in set(label_columns or [])]
    columns = [c for c in candidates if len(dataset) == 0 or isinstance(dataset[0][c], str)]
    if not columns:
        raise ValueError(
            f"The dataset has no text column to measure (columns {dataset.column_names}, labels {label_columns})"
        )
    lengths = torch.zeros(len(dataset), dtype=torch.long)
    for column in columns:
        lengths += torch.tensor([len(v) for v in dataset[column]], dtype=torch.long)
    return lengths
