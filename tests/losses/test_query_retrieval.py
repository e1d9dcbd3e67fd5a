from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import st_leap
from st_leap.losses import QueryRetrievalLoss
from tests.losses.conftest import build_tiny_bert

QUERIES = ["a man is eating food", "a dog plays with a ball", "the child reads a book", "a woman sings in the park",
           "a cat is sitting on the table", "a red car drives in the street"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("retrieval"), hidden=32, layers=4, seed=3)


def _features(model, texts):
    return model.preprocess(texts)


def _documents(n: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_loss_is_the_in_batch_cross_entropy_of_each_layer(student_dir):
    """The loss is the mean over layers of the cross-entropy of each query picking its own document among the
    batch's, from scale * cosine; layer L is the model's own sentence embedding."""
    model = st_leap.from_pretrained(student_dir)
    model.eval()  # no dropout: the loss and encode see the same embeddings
    docs = _documents(len(QUERIES))
    loss = QueryRetrievalLoss(model, layers=[2, 4], scale=10.0)
    value = loss([_features(model, QUERIES)], docs)
    with torch.no_grad():
        expected = []
        for layer in (2, 4):
            q = model.encode(QUERIES, truncate_layers=layer, convert_to_tensor=True, exit_threshold=None)
            scores = 10.0 * F.normalize(q, dim=-1) @ docs.T
            expected.append(F.cross_entropy(scores, torch.arange(len(QUERIES))))
    assert value.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-4)
    assert loss.get_config_dict() == {"layers": [2, 4], "scale": 10.0, "use_exit_maps": False}


def test_rows_with_the_same_document_are_not_negatives(student_dir):
    """Two sentences of one passage in a batch (rows 0 and 3 share document 0): neither is scored against the
    other's copy of its own document; every other row still sees both copies as negatives."""
    model = st_leap.from_pretrained(student_dir)
    model.eval()
    loss = QueryRetrievalLoss(model, layers=[3])
    docs = _documents(3)
    batch = torch.cat([docs, docs[:1]])
    with torch.no_grad():
        value = loss([_features(model, QUERIES[:4])], batch).item()
        q = F.normalize(model.encode(QUERIES[:4], truncate_layers=3, convert_to_tensor=True, exit_threshold=None), dim=-1)
    scores = 20.0 * q @ batch.T
    rows = [
        F.cross_entropy(scores[0, :3][None], torch.tensor([0])),  # row 0: its document, 1, 2 (not the copy)
        F.cross_entropy(scores[1][None], torch.tensor([1])),  # rows 1, 2: all four columns
        F.cross_entropy(scores[2][None], torch.tensor([2])),
        F.cross_entropy(scores[3, 1:][None], torch.tensor([2])),  # row 3: 1, 2, its document (not column 0)
    ]
    assert value == pytest.approx(torch.stack(rows).mean().item(), abs=1e-4)
    unmasked = F.cross_entropy(scores, torch.arange(4)).item()
    assert value < unmasked  # counting the copy as a negative would cost more


def test_training_moves_queries_toward_their_documents(student_dir):
    """A few optimizer steps lower the loss on the training batch, at every trained layer."""
    model = st_leap.from_pretrained(student_dir)
    model.train()
    torch.manual_seed(0)
    docs = _documents(len(QUERIES), seed=1)
    loss = QueryRetrievalLoss(model, layers=[2, 3, 4])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = loss([_features(model, QUERIES)], docs).item()
    for _ in range(25):
        optimizer.zero_grad()
        loss([_features(model, QUERIES)], docs).backward()
        optimizer.step()
    assert loss([_features(model, QUERIES)], docs).item() < 0.7 * first


def test_exit_maps_are_read_and_trained(student_dir, tmp_path):
    """With exit maps, each layer below L is scored through its map, and the maps receive gradients."""
    from st_leap.exit_maps import exit_maps_module, fit_exit_maps

    model = st_leap.from_pretrained(student_dir)
    fit_exit_maps(model, QUERIES * 20, show_progress_bar=False)
    model.eval()
    docs = _documents(len(QUERIES))
    loss = QueryRetrievalLoss(model, layers=[2, 4])
    assert loss.use_exit_maps
    value = loss([_features(model, QUERIES)], docs)
    value.backward()
    maps = exit_maps_module(model)
    assert maps.weight.grad is not None and maps.weight.grad[1].abs().sum() > 0  # layer 2's map
    with torch.no_grad():
        mapped = model.encode(QUERIES, truncate_layers=2, convert_to_tensor=True, exit_threshold=None)
        plain = model.encode(QUERIES, truncate_layers=2, convert_to_tensor=True, exit_threshold=None, exit_maps=False)
        unmapped = QueryRetrievalLoss(model, layers=[2], use_exit_maps=False)
        assert unmapped([_features(model, QUERIES)], docs).item() == pytest.approx(
            F.cross_entropy(20.0 * F.normalize(plain, dim=-1) @ docs.T, torch.arange(6)).item(), abs=1e-4)
        assert QueryRetrievalLoss(model, layers=[2])([_features(model, QUERIES)], docs).item() == pytest.approx(
            F.cross_entropy(20.0 * F.normalize(mapped, dim=-1) @ docs.T, torch.arange(6)).item(), abs=1e-4)


def test_bad_arguments_fail_clearly(student_dir):
    model = st_leap.from_pretrained(student_dir)
    with pytest.raises(ValueError, match="layers"):
        QueryRetrievalLoss(model, layers=[0, 5])
    with pytest.raises(ValueError, match="scale"):
        QueryRetrievalLoss(model, scale=0)
    with pytest.raises(ValueError, match="exit maps"):
        QueryRetrievalLoss(model, use_exit_maps=True)
    loss = QueryRetrievalLoss(model)
    with pytest.raises(ValueError, match="labels"):
        loss([_features(model, QUERIES[:2])], None)
    with pytest.raises(ValueError, match="width"):
        loss([_features(model, QUERIES[:2])], torch.randn(2, 7))
