from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.readers import InputExample
from torch.utils.data import DataLoader

from st_leap.exit_policy import mean_pool
from st_leap.losses import LEAPLoss
from st_leap.losses.leap import PAPER_PRESET, offdiag_similarity_kl, uniform_layer_map


def _pooled_layers(model: SentenceTransformer, sentences: list[str]) -> list[torch.Tensor]:
    model.eval()
    model[0].auto_model.config.output_hidden_states = True
    with torch.no_grad():
        features = model.preprocess(sentences)
        out = model(features)
    return [mean_pool(h, out["attention_mask"]) for h in out["all_layer_embeddings"]]


def _cos_to_final(model: SentenceTransformer, sentences: list[str], layers: list[int]) -> float:
    pooled = _pooled_layers(model, sentences)
    return float(torch.stack([F.cosine_similarity(pooled[layer], pooled[-1]).mean() for layer in layers]).mean())


def test_LEAPLoss_returns_weighted_components(leap_student, leap_sentences):
    """forward returns one weighted tensor per enabled term (the Trainer logs and sums them); weight 0 skips a term."""
    loss = LEAPLoss(leap_student, min_layer=2, redundancy_weight=0.0)
    out = loss([leap_student.preprocess(leap_sentences[:8])])
    assert set(out) == {"final", "exit", "contrastive", "late"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v >= -1e-6 for v in out.values())
    doubled = LEAPLoss(leap_student, min_layer=2, redundancy_weight=0.0, late_weight=2 * loss.late_weight)
    doubled.eval(), loss.eval(), leap_student.eval()
    features = leap_student.preprocess(leap_sentences[:8])
    a, b = loss([features]), doubled([dict(features)])
    assert torch.allclose(2 * a["late"], b["late"], atol=1e-6)


def test_LEAPLoss_exit_term_is_dual_target_soft_margin():
    """exit = sum_l w_l [(1-a) sigmoid(s(tau - cos(p_l, t))) + a sigmoid(s(tau - cos(p_l, sg p_L)))], eq. 5."""
    model = _StubModel()
    loss = LEAPLoss(
        model,
        final_weight=0,
        contrastive_weight=0,
        late_weight=0,
        redundancy_weight=0,
        exit_tau=0.9,
        exit_slope=4.0,
        student_weight=0.7,
        exit_layers=[2],
        min_layer=2,
    )
    torch.manual_seed(0)
    final = torch.randn(5, 8)
    p2 = torch.randn(5, 8)
    teacher = torch.randn(5, 8)
    out = loss.compute_loss_from_embeddings(final, {1: p2, 2: p2, 3: final}, teacher)
    expected = (
        0.3 * torch.sigmoid(4 * (0.9 - F.cosine_similarity(p2, teacher))).mean()
        + 0.7 * torch.sigmoid(4 * (0.9 - F.cosine_similarity(p2, final))).mean()
    )
    assert torch.allclose(out["exit"], expected, atol=1e-6)


def test_LEAPLoss_contrastive_kl_excludes_diagonal():
    """The batch-similarity KL is 0 for identical embeddings and clearly > 0 for differently arranged ones, even at
    temperature 0.05 where a KL with the diagonal in is ~0 (issue 3)."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 32), torch.randn(16, 32)
    assert offdiag_similarity_kl(x, x, 0.05).item() == pytest.approx(0.0, abs=1e-6)
    with_diag = F.kl_div(
        F.log_softmax(F.normalize(x) @ F.normalize(x).T / 0.05, -1),
        F.log_softmax(F.normalize(y) @ F.normalize(y).T / 0.05, -1),
        log_target=True,
        reduction="batchmean",
    )
    assert with_diag.item() < 1e-3
    assert offdiag_similarity_kl(x, y, 0.05).item() > 0.5


def test_LEAPLoss_uniform_layer_map():
    """Student layer l maps to teacher layer round(l * L_t / L_s); the last maps to the last (eq. 4)."""
    assert uniform_layer_map(6, 12) == {1: 2, 2: 4, 3: 6, 4: 8, 5: 10, 6: 12}
    assert uniform_layer_map(6, 6) == {i: i for i in range(1, 7)}
    assert uniform_layer_map(4, 6)[4] == 6
    with pytest.raises(ValueError, match="num_student_layers=0"):
        uniform_layer_map(0, 6)


def test_LEAPLoss_live_teacher_is_frozen_and_never_optimized(
    leap_student, leap_student_dir, leap_sentences, make_tiny_model
):
    """A live teacher is in eval mode, gets no gradients, and is not among the loss's parameters (the Trainer's
    optimizer reads loss.named_parameters())."""
    teacher = make_tiny_model(leap_student_dir)
    teacher.train()
    loss = LEAPLoss(leap_student, teacher=teacher, min_layer=2)
    assert not teacher.training
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in loss.parameters()}
    assert "teacher" not in dict(loss.named_children())
    out = loss([leap_student.preprocess(leap_sentences[:8])])
    sum(out.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in leap_student.parameters())


def test_LEAPLoss_projection_trained_when_widths_differ(
    leap_student, leap_wide_teacher_dir, leap_sentences, make_tiny_model
):
    """A 48-wide, 6-layer teacher for a 32-wide, 4-layer student adds learned projections that are loss parameters
    and receive gradients; the intermediate term uses the uniform layer map."""
    teacher = make_tiny_model(leap_wide_teacher_dir)
    loss = LEAPLoss(leap_student, teacher=teacher, intermediate_weight=1.0, min_layer=2)
    names = dict(loss.named_parameters())
    assert "projection.weight" in names and "hidden_projection.weight" in names
    assert loss.teacher_layers() == [2, 3, 4]  # student layers 1..3 of 4 -> teacher layers of 6
    out = loss([leap_student.preprocess(leap_sentences[:8])])
    assert "intermediate" in out
    sum(out.values()).backward()
    assert loss.projection.weight.grad.abs().sum() > 0
    assert loss.hidden_projection.weight.grad.abs().sum() > 0


def test_LEAPLoss_precomputed_labels_equal_live_teacher(
    leap_student, leap_wide_teacher_dir, leap_sentences, tmp_path, make_tiny_model
):
    """Teacher embeddings cached by st_leap.teacher and passed as labels give the same loss as the live teacher."""
    from st_leap.teacher import compute_teacher_embeddings

    teacher = make_tiny_model(leap_wide_teacher_dir)
    live = LEAPLoss(leap_student, teacher=teacher, intermediate_weight=1.0, min_layer=2)
    cached = LEAPLoss(leap_student, intermediate_weight=1.0, min_layer=2, num_teacher_layers=6, teacher_dim=48)
    cached.load_state_dict(live.state_dict())
    sentences = leap_sentences[:8]
    labels = compute_teacher_embeddings(
        teacher, sentences, tmp_path / "cache", layers=live.teacher_layers(), show_progress_bar=False
    )
    assert labels.shape == (8, 4, 48)
    leap_student.eval()
    features = leap_student.preprocess(sentences)
    a = live([dict(features)])
    b = cached([dict(features)], torch.from_numpy(labels))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    with pytest.raises(ValueError, match=r"\(batch, 4, dim\)"):
        cached([dict(features)], torch.from_numpy(labels[:, :2]))


def test_LEAPLoss_progressive_student_weight():
    """With student_weight_warmup_steps=N the student weight grows linearly from 0 to its value over N training
    forward passes, then stays."""
    model = _StubModel()
    loss = LEAPLoss(model, student_weight=0.7, student_weight_warmup_steps=4, min_layer=2)
    assert loss.current_student_weight() == 0.0
    loss._steps += 2
    assert loss.current_student_weight() == pytest.approx(0.35)
    loss._steps += 10
    assert loss.current_student_weight() == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "papr"}, "preset must be 'default' or 'paper', got 'papr'"),
        ({"exit_weight": -1.0}, "exit_weight must be a finite number >= 0, got -1.0"),
        ({"exit_tau": 1.5}, r"exit_tau must be in \[-1, 1\], got 1.5"),
        ({"exit_slope": 0}, "exit_slope must be a finite number > 0, got 0"),
        ({"student_weight": 2}, r"student_weight must be in \[0, 1\], got 2"),
        ({"exit_layers": [0, 9]}, r"exit_layers must be ints in 1..3, got \[0, 9\]"),
        ({"min_layer": 7}, "min_layer must be an int in 1..3, got 7"),
        ({"exit_layers": [2], "exit_layer_weights": [1.0, 2.0]}, "exit_layer_weights must be 1 finite"),
        ({"contrastive_layers": "all"}, "contrastive_layers must be 'final' or 'exit', got 'all'"),
    ],
)
def test_LEAPLoss_bad_arguments_raise(kwargs, match):
    """Bad hyperparameters raise a ValueError that names the argument and quotes the bad value."""
    kwargs.setdefault("min_layer", 2)
    with pytest.raises(ValueError, match=match):
        LEAPLoss(_StubModel(), **kwargs)


def test_LEAPLoss_paper_preset_and_config():
    """preset='paper' uses the paper values known to us (tau 0.98, s 10, student weight 0.7, T 0.05); explicit
    arguments override a preset; get_config_dict and citation feed the model card."""
    loss = LEAPLoss(_StubModel(), preset="paper", min_layer=2, exit_slope=3.0)
    config = loss.get_config_dict()
    assert config["exit_tau"] == PAPER_PRESET["exit_tau"] == 0.98
    assert config["exit_slope"] == 3.0
    assert config["student_weight"] == 0.7 and config["contrastive_temperature"] == 0.05
    assert config["preset"] == "paper"
    assert "2605.01058" in loss.citation


def test_LEAPLoss_classic_fit_pulls_layers_to_final(leap_student, leap_student_dir, leap_sentences, make_tiny_model):
    """model.fit with InputExample(texts=[s]) and no labels, frozen copy as teacher: the mean cosine of the
    intermediate layers to the final one goes up (the point of the loss)."""
    teacher = make_tiny_model(leap_student_dir)
    before = _cos_to_final(leap_student, leap_sentences, [2, 3])
    loss = LEAPLoss(leap_student, teacher=teacher, min_layer=2)
    examples = [InputExample(texts=[s]) for s in leap_sentences]
    loader = DataLoader(examples, batch_size=16, shuffle=True)
    leap_student.fit(
        train_objectives=[(loader, loss)],
        epochs=5,
        warmup_steps=2,
        optimizer_params={"lr": 1e-3},
        show_progress_bar=False,
    )
    after = _cos_to_final(leap_student, leap_sentences, [2, 3])
    assert after > before + 0.05, (before, after)
    frozen = make_tiny_model(leap_student_dir)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), frozen.state_dict().values(), strict=True)
    )


def test_LEAPLoss_trainer_logs_components_with_early_exit_module(leap_student_dir, leap_sentences, tmp_path):
    """Inside SentenceTransformerTrainer on an st_leap early-exit model the components are logged by name."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from st_leap.model import from_pretrained

    student = from_pretrained(leap_student_dir, exit_min_layer=2)
    assert type(student[0]).__name__ == "EarlyExitTransformer"
    loss = LEAPLoss(student, teacher=from_pretrained(leap_student_dir), min_layer=2)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        logging_steps=2,
        report_to="none",
        save_strategy="no",
        learning_rate=1e-3,
        warmup_steps=1,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=student, args=args, loss=loss, train_dataset=Dataset.from_dict({"sentence": leap_sentences[:32]})
    )
    trainer.train()
    logged = {k for entry in trainer.state.log_history for k in entry}
    for term in ("final", "exit", "contrastive", "late", "redundancy"):
        assert any(k.endswith(term) for k in logged), (term, logged)
    assert math.isfinite(trainer.state.log_history[-1].get("train_loss", float("nan")))


class _StubModel(torch.nn.Module):
    """Just enough of a SentenceTransformer for the math-only tests: 3 layers, width 8."""

    def __init__(self) -> None:
        super().__init__()

        class _Cfg:
            num_hidden_layers = 3
            hidden_size = 8
            output_hidden_states = False

        class _First(torch.nn.Module):
            auto_model = type("M", (), {"config": _Cfg()})()

        self.first = _First()

    def __getitem__(self, i):
        return self.first

    def get_embedding_dimension(self) -> int:
        return 8
