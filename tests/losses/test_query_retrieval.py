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
    assert loss.get_config_dict() == {
        "layers": [2, 4], "scale": 10.0, "use_exit_maps": False, "hard_negatives": 0, "soft_weight": 0.0,
        "soft_scale": 20.0, "weight": 1.0,
    }


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


def _grad(model, loss, labels):
    """The loss on QUERIES and the gradient it gives the first encoder layer's query weights."""
    model.zero_grad()
    value = loss([_features(model, QUERIES)], labels)
    value.backward()
    weight = model[0].auto_model.encoder.layer[0].attention.self.query.weight
    return value.detach(), weight.grad.detach().clone()


def _hard_labels(k: int = 2, seed: int = 5) -> torch.Tensor:
    """(B, 1 + k, D): each query's document, then k other documents (its hard negatives)."""
    docs = _documents(len(QUERIES))
    negatives = _documents(len(QUERIES) * k, seed=seed).reshape(len(QUERIES), k, -1)
    return torch.cat([docs[:, None], negatives], dim=1)


def test_query_retrieval_hard_negatives_change_the_gradient(student_dir):
    """Hard negatives join the candidates (B + B * k): on the same batch the loss and gradient differ from
    in-batch negatives alone, and the loss is the cross-entropy over all own documents and hard negatives."""
    model = st_leap.from_pretrained(student_dir)
    model.eval()
    labels = _hard_labels()
    plain, plain_grad = _grad(model, QueryRetrievalLoss(model, layers=[3]), labels[:, 0])
    hard, hard_grad = _grad(model, QueryRetrievalLoss(model, layers=[3], hard_negatives=2), labels)
    assert hard > plain  # more negatives, a harder problem
    assert not torch.allclose(plain_grad, hard_grad)
    with torch.no_grad():
        q = F.normalize(model.encode(QUERIES, truncate_layers=3, convert_to_tensor=True, exit_threshold=None), dim=-1)
    candidates = torch.cat([labels[:, 0], labels[:, 1:].reshape(-1, 32)])
    expected = F.cross_entropy(20.0 * q @ candidates.T, torch.arange(len(QUERIES)))
    assert hard.item() == pytest.approx(expected.item(), abs=1e-4)
    # the default loss reads (B, 1, D) labels as (B, D)
    one = QueryRetrievalLoss(model, layers=[3])
    with torch.no_grad():
        assert one([_features(model, QUERIES)], labels[:, :1]).item() == pytest.approx(plain.item(), abs=1e-6)


def test_query_retrieval_soft_targets_add_a_kl_term(student_dir):
    """``soft_weight > 0`` reads the label's last row as the index model's embedding of the query and adds
    ``soft_weight * KL(teacher || query)`` over the candidates: a nonzero gradient of its own, different from the
    hard term's, and exactly the cross-entropy when the query already scores like the teacher."""
    model = st_leap.from_pretrained(student_dir)
    model.eval()
    labels = _hard_labels()
    teacher = _documents(len(QUERIES), seed=9)[:, None]
    soft_labels = torch.cat([labels, teacher], dim=1)
    hard, hard_grad = _grad(model, QueryRetrievalLoss(model, layers=[3], hard_negatives=2), labels)
    both, both_grad = _grad(
        model, QueryRetrievalLoss(model, layers=[3], hard_negatives=2, soft_weight=1.0, soft_scale=10.0), soft_labels
    )
    assert both > hard and not torch.allclose(hard_grad, both_grad)
    assert (both_grad - hard_grad).abs().sum() > 0  # the KL term's own gradient
    with torch.no_grad():
        q = F.normalize(model.encode(QUERIES, truncate_layers=3, convert_to_tensor=True, exit_threshold=None), dim=-1)
    candidates = torch.cat([labels[:, 0], labels[:, 1:].reshape(-1, 32)])
    student = torch.log_softmax(20.0 * q @ candidates.T, dim=-1)
    target = torch.softmax(10.0 * teacher[:, 0] @ candidates.T, dim=-1)
    kl = F.kl_div(student, target, reduction="batchmean")
    assert (both - hard).item() == pytest.approx(kl.item(), abs=1e-4)
    # a teacher that scores as the query does (same embedding, same scale): KL 0, the hard loss alone
    loss = QueryRetrievalLoss(model, layers=[3], soft_weight=2.0, soft_scale=20.0)
    with torch.no_grad():
        same = torch.stack([labels[:, 0], q], dim=1)
        assert loss([_features(model, QUERIES)], same).item() == pytest.approx(
            QueryRetrievalLoss(model, layers=[3])([_features(model, QUERIES)], labels[:, 0]).item(), abs=1e-4)


def test_query_retrieval_weight_scales_the_loss(student_dir):
    """``weight`` multiplies the whole loss: 2 doubles it (and its gradient)."""
    model = st_leap.from_pretrained(student_dir)
    model.eval()
    labels = _hard_labels()
    one, one_grad = _grad(model, QueryRetrievalLoss(model, layers=[2, 4], hard_negatives=2), labels)
    two, two_grad = _grad(model, QueryRetrievalLoss(model, layers=[2, 4], hard_negatives=2, weight=2.0), labels)
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)
    torch.testing.assert_close(two_grad, 2 * one_grad)
    assert QueryRetrievalLoss(model, weight=2.0, hard_negatives=1).get_config_dict()["weight"] == 2.0


def test_query_retrieval_hard_negative_equal_to_an_own_document_is_masked(student_dir):
    """Row 0's hard negative is row 1's own document: for row 1 that candidate is a copy of its positive and is
    masked; for row 0 (and every other row) it is a negative like any other."""
    model = st_leap.from_pretrained(student_dir)
    model.eval()
    queries = QUERIES[:3]
    docs = _documents(3)
    negatives = _documents(3, seed=7)
    negatives[0] = docs[1]
    labels = torch.stack([docs, negatives], dim=1)  # (3, 2, D)
    loss = QueryRetrievalLoss(model, layers=[3], hard_negatives=1)
    with torch.no_grad():
        value = loss([_features(model, queries)], labels).item()
        q = F.normalize(model.encode(queries, truncate_layers=3, convert_to_tensor=True, exit_threshold=None), dim=-1)
    candidates = torch.cat([docs, negatives])  # columns 0-2 own documents, 3-5 hard negatives (3 = docs[1])
    scores = 20.0 * q @ candidates.T
    rows = [
        F.cross_entropy(scores[0][None], torch.tensor([0])),  # row 0: all six, column 3 a negative
        F.cross_entropy(scores[1, [0, 1, 2, 4, 5]][None], torch.tensor([1])),  # row 1: not column 3 (its copy)
        F.cross_entropy(scores[2][None], torch.tensor([2])),
    ]
    assert value == pytest.approx(torch.stack(rows).mean().item(), abs=1e-4)
    # the soft term uses the same mask: a finite loss and gradient with the masked copy in the batch
    soft = QueryRetrievalLoss(model, layers=[3], hard_negatives=1, soft_weight=1.0)
    teacher = _documents(3, seed=11)[:, None]
    model.zero_grad()
    value = soft([_features(model, queries)], torch.cat([labels, teacher], dim=1))
    value.backward()
    assert torch.isfinite(value) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_query_retrieval_labels_of_the_wrong_rows_are_refused(student_dir):
    """Labels whose row count R does not match ``1 + hard_negatives + (soft_weight > 0)`` are a ValueError
    naming the shape expected, as are bad lever values."""
    model = st_leap.from_pretrained(student_dir)
    features = [_features(model, QUERIES[:2])]
    with pytest.raises(ValueError, match=r"\(batch, 3, dim\).*got \(2, 2, 32\)"):
        QueryRetrievalLoss(model, hard_negatives=2)(features, torch.randn(2, 2, 32))
    with pytest.raises(ValueError, match=r"\(batch, 4, dim\).*embedding of the query"):
        QueryRetrievalLoss(model, hard_negatives=2, soft_weight=0.5)(features, torch.randn(2, 3, 32))
    with pytest.raises(ValueError, match=r"\(batch, 2, dim\).*got \(2, 32\)"):
        QueryRetrievalLoss(model, hard_negatives=1)(features, torch.randn(2, 32))
    with pytest.raises(ValueError, match=r"\(batch, dim\) or \(batch, 1, dim\).*got \(2, 3, 32\)"):
        QueryRetrievalLoss(model)(features, torch.randn(2, 3, 32))
    for kwargs, name in (({"hard_negatives": -1}, "hard_negatives"), ({"soft_weight": -0.1}, "soft_weight"),
                         ({"soft_scale": 0}, "soft_scale"), ({"weight": 0}, "weight")):
        with pytest.raises(ValueError, match=name):
            QueryRetrievalLoss(model, **kwargs)
