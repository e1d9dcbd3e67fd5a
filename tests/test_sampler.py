from __future__ import annotations

import json
import random

import pytest
from datasets import Dataset

from st_leap.sampler import LengthGroupedBatchSampler, text_lengths
from st_leap.training import TrainConfig
from tests.conftest import VOCAB, build_tiny_model_dir


def _dataset(n: int = 203, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    sentences = ["x" * rng.randint(1, 120) for _ in range(n)]
    return Dataset.from_dict({"sentence": sentences, "label": [[float(i)] for i in range(n)]})


def _padded_cost(dataset: Dataset, batches: list[list[int]]) -> int:
    lengths = [len(s) for s in dataset["sentence"]]
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_row_once_per_epoch(drop_last):
    """Each epoch uses every row once (all but the dropped remainder with drop_last); len() matches the batches."""
    dataset = _dataset()
    sampler = LengthGroupedBatchSampler(dataset, batch_size=16, drop_last=drop_last, seed=3, megabatch_factor=4)
    batches = list(sampler)
    assert len(batches) == len(sampler) == (203 // 16 if drop_last else 13)
    rows = [i for b in batches for i in b]
    assert len(rows) == len(set(rows))
    if drop_last:
        assert all(len(b) == 16 for b in batches) and len(rows) == 192
    else:
        assert sorted(rows) == list(range(203))


def test_batches_group_lengths_and_reshuffle_per_epoch():
    """Grouped batches pad far less than random batches of the same size; the same seed and epoch give the same
    batches, another epoch other ones; megabatch_factor=1 keeps random batches."""
    dataset = _dataset(400)
    sampler = LengthGroupedBatchSampler(dataset, batch_size=20, drop_last=True, seed=1)
    grouped = list(sampler)
    ungrouped = list(LengthGroupedBatchSampler(dataset, batch_size=20, drop_last=True, seed=1, megabatch_factor=1))
    assert _padded_cost(dataset, grouped) < 0.7 * _padded_cost(dataset, ungrouped)
    # one mega-batch covering the whole set: the batches are the sorted lengths cut into runs
    lengths = sorted((len(s) for s in dataset["sentence"]), reverse=True)
    optimal = sum(lengths[i] * 20 for i in range(0, 400, 20))
    assert _padded_cost(dataset, grouped) == optimal
    assert list(sampler) == grouped
    sampler.set_epoch(1)
    assert list(sampler) != grouped


def test_lengths_skip_label_columns_and_bad_input_is_rejected():
    """Lengths count string columns only (labels never); a dataset without text, or a bad factor, is an error."""
    dataset = _dataset(10)
    expected = [len(s) for s in dataset["sentence"]]
    assert text_lengths(dataset, ["label"]).tolist() == text_lengths(dataset).tolist() == expected
    pairs = dataset.add_column("other", ["ab"] * 10)
    assert text_lengths(pairs, ["label"]).tolist() == [n + 2 for n in expected]
    with pytest.raises(ValueError, match="no text column"):
        text_lengths(dataset.remove_columns("sentence"))
    with pytest.raises(ValueError, match="megabatch_factor must be an int >= 1"):
        LengthGroupedBatchSampler(dataset, batch_size=2, drop_last=False, valid_label_columns=["label"], megabatch_factor=0)


def test_train_with_group_by_length_uses_the_sampler(tmp_path, monkeypatch):
    """TrainConfig(group_by_length=True) hands the sampler to the Trainer: its batches are what the loss sees."""
    import st_leap.sampler
    from st_leap import resources
    from st_leap.training import train

    with pytest.raises(ValueError, match="group_by_length needs api='trainer'"):
        TrainConfig(group_by_length=True, api="fit")
    seen: list[list[int]] = []
    original_iter = st_leap.sampler.LengthGroupedBatchSampler.__iter__

    def recording_iter(self):
        for batch in original_iter(self):
            seen.append(batch)
            yield batch

    monkeypatch.setattr(st_leap.sampler.LengthGroupedBatchSampler, "__iter__", recording_iter)
    monkeypatch.setattr(
        resources, "load_sentences", lambda n, seed=0: [" ".join(VOCAB[5 : 6 + i % 12]) for i in range(n)]
    )
    tiny = build_tiny_model_dir(tmp_path / "tiny", num_layers=3)
    config = TrainConfig(model=tiny, teacher=tiny, output_dir=str(tmp_path / "out"), max_steps=3, batch_size=4,
                         num_sentences=24, max_seq_length=16, warmup_steps=1, group_by_length=True, logging_steps=1)
    result = train(config)
    assert result.steps == 3
    assert len(seen) >= 3 and all(len(b) == 4 for b in seen)
    saved = json.loads((tmp_path / "out" / "leap_training.json").read_text())
    assert saved["config"]["group_by_length"] is True and saved["teacher_seconds"] >= 0
