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
from st_leap.losses.leap import LEAPSettings, offdiag_similarity_kl, uniform_layer_map


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
    loss = LEAPLoss(leap_student, exit_min_layer=2, adjacent_weight=0.0)
    out = loss([leap_student.preprocess(leap_sentences[:8])])
    assert set(out) == {"final", "exit", "contrastive", "anchor"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v >= -1e-6 for v in out.values())
    doubled = LEAPLoss(leap_student, exit_min_layer=2, adjacent_weight=0.0, anchor_weight=2 * loss.anchor_weight)
    doubled.eval(), loss.eval(), leap_student.eval()
    features = leap_student.preprocess(leap_sentences[:8])
    a, b = loss([features]), doubled([dict(features)])
    assert torch.allclose(2 * a["anchor"], b["anchor"], atol=1e-6)


def test_LEAPLoss_exit_term_is_dual_target_soft_margin():
    """Ours (exit_targets='convex'): (1-a) sigmoid(s(tau - cos(p_l, t))) + a sigmoid(s(tau - cos(p_l, sg p_L)))."""
    model = _StubModel()
    loss = LEAPLoss(
        model,
        final_weight=0,
        contrastive_weight=0,
        anchor_weight=0,
        adjacent_weight=0,
        exit_tau=0.9,
        exit_slope=4.0,
        student_weight=0.7,
        exit_layers=[2],
        exit_min_layer=2,
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
    loss = LEAPLoss(leap_student, teacher=teacher, exit_min_layer=2)
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
    loss = LEAPLoss(leap_student, teacher=teacher, intermediate_weight=1.0, exit_min_layer=2)
    names = dict(loss.named_parameters())
    assert "projection.weight" in names and "hidden_projection.weight" in names
    assert loss.teacher_layers() == [2, 3, 4, 6]  # student layers 1..4 of 4 (eq. 3 sums over all) -> teacher layers of 6
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
    live = LEAPLoss(leap_student, teacher=teacher, intermediate_weight=1.0, exit_min_layer=2)
    cached = LEAPLoss(leap_student, intermediate_weight=1.0, exit_min_layer=2, num_teacher_layers=6, teacher_dim=48)
    cached.load_state_dict(live.state_dict())
    sentences = leap_sentences[:8]
    labels = compute_teacher_embeddings(
        teacher, sentences, tmp_path / "cache", layers=live.teacher_layers(), show_progress_bar=False
    )
    assert labels.shape == (8, 5, 48)
    leap_student.eval()
    features = leap_student.preprocess(sentences)
    a = live([dict(features)])
    b = cached([dict(features)], torch.from_numpy(labels))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    with pytest.raises(ValueError, match=r"\(batch, 5, dim\)"):
        cached([dict(features)], torch.from_numpy(labels[:, :2]))


def test_LEAPLoss_progressive_student_weight():
    """With student_weight_ramp=(start, end) the student weight is 0 until start * total_steps, grows linearly to
    its value at end * total_steps, then stays; a ramp without total_steps is refused."""
    model = _StubModel()
    loss = LEAPLoss(model, student_weight=0.7, student_weight_ramp=(0.1, 0.6), total_steps=100, exit_min_layer=2)
    assert loss.current_student_weight() == 0.0
    loss._steps += 10
    assert loss.current_student_weight() == 0.0
    loss._steps += 25
    assert loss.current_student_weight() == pytest.approx(0.35)
    loss._steps += 40
    assert loss.current_student_weight() == pytest.approx(0.7)
    # Without total_steps and outside a Trainer, the ramp cannot know where training stands: a clear error.
    unscheduled = LEAPLoss(model, student_weight_ramp=(0.1, 0.6), exit_min_layer=2)
    with pytest.raises(ValueError, match="pass total_steps"):
        unscheduled.current_student_weight()


def test_LEAPLoss_paper_preset_takes_total_steps_from_fit(leap_student, leap_sentences):
    """LEAPLoss(model, preset="paper") trains in model.fit without total_steps: the number of steps comes from the
    Trainer that fit builds (an explicit value still wins)."""
    from sentence_transformers.sentence_transformer.readers import InputExample
    from torch.utils.data import DataLoader

    loader = DataLoader([InputExample(texts=[s]) for s in leap_sentences[:24]], batch_size=8, shuffle=False)
    import copy

    teacher = copy.deepcopy(leap_student)
    loss = LEAPLoss(leap_student, teacher=teacher, preset="paper", exit_min_layer=2)
    assert loss.total_steps is None
    leap_student.fit(train_objectives=[(loader, loss)], epochs=2, warmup_steps=0, show_progress_bar=False)
    assert loss.total_steps == 6 and loss.step == 6
    assert loss.current_student_weight() == pytest.approx(0.7)  # past the end of the ramp
    explicit = LEAPLoss(leap_student, teacher=teacher, preset="paper", exit_min_layer=2, total_steps=100)
    leap_student.fit(train_objectives=[(loader, explicit)], epochs=1, warmup_steps=0, show_progress_bar=False)
    assert explicit.total_steps == 100


def test_LEAPLoss_trains_exit_maps_with_the_encoder(leap_student, leap_sentences):
    """use_exit_maps=True: the layer terms read the fitted maps, and training moves the maps (model parameters)."""
    import st_leap
    from st_leap.exit_maps import exit_maps_module, fit_exit_maps

    with pytest.raises(ValueError, match="fit them first"):
        LEAPLoss(leap_student, use_exit_maps=True, exit_min_layer=2)
    model = st_leap.from_pretrained(leap_student[0].auto_model.name_or_path, device="cpu")
    model.max_seq_length = 16
    fit_exit_maps(model, leap_sentences, show_progress_bar=False)
    maps = exit_maps_module(model)
    start = maps.weight.detach().clone()
    loss = LEAPLoss(model, use_exit_maps=True, exit_min_layer=2)
    plain = LEAPLoss(model, exit_min_layer=2)
    features = model.preprocess(leap_sentences[:8])
    mapped_terms, plain_terms = loss([dict(features)]), plain([dict(features)])
    assert mapped_terms["anchor"].item() != pytest.approx(plain_terms["anchor"].item())
    assert any(p is maps.weight for p in loss.parameters())  # what the Trainer collects and optimizes
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    sum(loss([dict(model.preprocess(leap_sentences[:8]))]).values()).backward()
    optimizer.step()
    assert not torch.equal(maps.weight.detach(), start)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "papr"}, "preset must be 'recipe' or 'paper', got 'papr'"),
        ({"late_weight": -0.5}, "late_weight must be a finite number >= 0, got -0.5"),
        ({"redundancy_cap": 0}, "redundancy_cap must be a finite number > 0, got 0"),
        ({"student_weight_ramp": (0.6, 0.1)}, "student_weight_ramp must be"),
        ({"exit_targets": "both"}, "exit_targets must be 'sum' or 'convex', got 'both'"),
        ({"exit_weight": -1.0}, "exit_weight must be a finite number >= 0, got -1.0"),
        ({"exit_tau": 1.5}, r"exit_tau must be in \[-1, 1\], got 1.5"),
        ({"exit_slope": 0}, "exit_slope must be a finite number > 0, got 0"),
        ({"student_weight": 2}, r"student_weight must be in \[0, 1\] with exit_targets='convex', got 2"),
        ({"exit_layers": [0, 9]}, r"exit_layers must be ints in 1..3, got \[0, 9\]"),
        ({"exit_min_layer": 7}, "exit_min_layer must be an int in 1..3, got 7"),
        ({"exit_layers": [2], "exit_layer_weights": [1.0, 2.0]}, "exit_layer_weights must be 1 finite"),
        ({"contrastive_layers": "all"}, "contrastive_layers must be 'final' or 'exit', got 'all'"),
    ],
)
def test_LEAPLoss_bad_arguments_raise(kwargs, match):
    """Bad hyperparameters raise a ValueError that names the argument and quotes the bad value."""
    kwargs.setdefault("exit_min_layer", 2)
    with pytest.raises(ValueError, match=match):
        LEAPLoss(_StubModel(), **kwargs)


def test_LEAPLoss_paper_preset_is_table_14():
    """preset='paper' is Table 14 of arXiv 2605.01058: alpha 0.3, beta 0.4, beta_stu 0.7, delta 0.3, epsilon 0.2,
    gamma 0.05, tau 0.98, slope 10, student weight ramped over 10%-60% of training, eq. 4 over all layers with the
    teacher and student parts summed; st_leap's own terms are off. Explicit arguments override the preset."""
    loss = LEAPLoss(_StubModel(), preset="paper", exit_min_layer=2, total_steps=10)
    s = loss.settings
    assert (s.final_weight, s.intermediate_weight, s.exit_weight, s.contrastive_weight) == (1.0, 0.3, 0.4, 0.3)
    assert (s.late_weight, s.redundancy_weight) == (0.2, 0.05)
    assert (s.exit_tau, s.exit_slope, s.student_weight, s.student_weight_ramp) == (0.98, 10.0, 0.7, (0.1, 0.6))
    assert s.exit_targets == "sum" and s.contrastive_direction == "student_teacher"
    assert (s.anchor_weight, s.adjacent_weight) == (0.0, 0.0)
    assert loss.exit_layers == [1, 2, 3] and loss.intermediate_layers == [1, 2, 3]
    assert loss.late_layers == [2] and loss.redundancy_layers == [1, 2]
    assert LEAPLoss(_StubModel(), preset="paper", exit_slope=3.0, exit_min_layer=2, total_steps=10).exit_slope == 3.0
    config = loss.get_config_dict()
    assert config["preset"] == "paper" and config["exit_weight"] == 0.4 and config["student_weight_ramp"] == [0.1, 0.6]
    assert "2605.01058" in loss.citation
    with pytest.raises(TypeError, match="Unknown LEAPLoss settings"):
        LEAPLoss(_StubModel(), preset="paper", total_steps=10, exit_wieght=1.0)


def _paper_terms(**overrides) -> tuple[LEAPLoss, dict[int, torch.Tensor], torch.Tensor]:
    zero = dict(final_weight=0, intermediate_weight=0, exit_weight=0, contrastive_weight=0, late_weight=0,
                redundancy_weight=0)
    loss = LEAPLoss(_StubModel(), preset="paper", exit_min_layer=2, total_steps=10, **(zero | overrides))
    torch.manual_seed(0)
    pooled = {layer: torch.randn(5, 8) for layer in (1, 2, 3)}
    return loss, pooled, torch.randn(5, 8)


def test_LEAPLoss_paper_redundancy_rewards_distance_up_to_the_cap():
    """Eq. 9: redundancy = -gamma * mean_l min(||e_{l+1} - e_l||, cap) on normalized embeddings: negative, and
    moving adjacent layers apart lowers it until the cap (it pushes layers apart, unlike our adjacent pull)."""
    loss, pooled, teacher = _paper_terms(redundancy_weight=0.05, redundancy_cap=10.0)
    out = loss.compute_loss_from_embeddings(pooled[3], pooled, teacher)
    e = {k: F.normalize(v, dim=-1) for k, v in pooled.items()}
    expected = -0.05 * ((e[2] - e[1]).norm(dim=-1).mean() + (e[3] - e[2]).norm(dim=-1).mean()) / 2
    assert out["redundancy"].item() < 0
    assert torch.allclose(out["redundancy"], expected, atol=1e-6)
    capped, _, _ = _paper_terms(redundancy_weight=0.05, redundancy_cap=0.3)
    assert capped.compute_loss_from_embeddings(pooled[3], pooled, teacher)["redundancy"].item() == pytest.approx(-0.015)
    p = {k: v.clone().requires_grad_(True) for k, v in pooled.items()}
    loss.compute_loss_from_embeddings(p[3], p, teacher)["redundancy"].backward()
    step = -p[1].grad  # gradient descent on layer 1
    before = (e[2] - e[1]).norm(dim=-1).mean()
    after = (F.normalize(pooled[2], dim=-1) - F.normalize(pooled[1] + 0.01 * step, dim=-1)).norm(dim=-1).mean()
    assert after > before


def test_LEAPLoss_paper_late_term_is_square_root_of_distance():
    """Eq. 8: late = epsilon * mean over late layers of (1 - cos(e_l, e_L)) ** 0.5 (no stop-gradient on e_L),
    finite gradient when a layer equals the final one."""
    loss, pooled, teacher = _paper_terms(late_weight=0.2)
    out = loss.compute_loss_from_embeddings(pooled[3], pooled, teacher)
    expected = 0.2 * (1 - F.cosine_similarity(pooled[2], pooled[3])).sqrt().mean()
    assert torch.allclose(out["late"], expected, atol=1e-6)
    same = {1: pooled[1], 2: pooled[3].clone().requires_grad_(True), 3: pooled[3]}
    loss.compute_loss_from_embeddings(pooled[3], same, teacher)["late"].backward()
    assert torch.isfinite(same[2].grad).all()


def test_LEAPLoss_paper_exit_term_sums_teacher_and_student_parts():
    """Eqs. 4-5 with exit_targets='sum': beta * [mean_{l=1..L} sig(10(tau - cos(e_l, t))) + a mean_{l<L}
    sig(10(tau - cos(e_l, sg e_L)))], a = beta_stu after the ramp."""
    loss, pooled, teacher = _paper_terms(exit_weight=0.4)
    loss._steps += 10  # end of training: a = 0.7
    out = loss.compute_loss_from_embeddings(pooled[3], pooled, teacher)

    def sig(a, b):
        return torch.sigmoid(10 * (0.98 - F.cosine_similarity(a, b))).mean()

    t_part = (sig(pooled[1], teacher) + sig(pooled[2], teacher) + sig(pooled[3], teacher)) / 3
    s_part = (sig(pooled[1], pooled[3]) + sig(pooled[2], pooled[3])) / 2
    assert torch.allclose(out["exit"], 0.4 * (t_part + 0.7 * s_part), atol=1e-6)


def test_LEAPLoss_contrastive_direction_as_printed():
    """The paper prints KL(softmax(S_s / T) || softmax(S_t / T)); direction='student_teacher' computes exactly that
    (diagonal excluded), and it differs from our teacher_student direction."""
    torch.manual_seed(1)
    x, y = torch.randn(6, 8), torch.randn(6, 8)
    eye = torch.eye(6, dtype=torch.bool)

    def probs(z):
        z = F.normalize(z, dim=-1)
        return F.softmax((z @ z.T / 0.05).masked_fill(eye, float("-inf")), dim=-1)

    ps, pt = probs(x), probs(y)
    kl_st = (ps * (ps.clamp_min(1e-30).log() - pt.clamp_min(1e-30).log())).masked_fill(eye, 0).sum(-1).mean()
    got = offdiag_similarity_kl(x, y, 0.05, "student_teacher")
    assert torch.allclose(got, kl_st, atol=1e-4)
    assert not torch.allclose(got, offdiag_similarity_kl(x, y, 0.05, "teacher_student"), atol=1e-3)


def test_LEAPSettings_defaults_are_the_recipe():
    """LEAPLoss() defaults are the recipe's loss (final 4, anchor 12, adjacent 6, exit 1 at slope 5, contrastive 1,
    student weight 0.7); the paper's late and redundancy terms are off."""
    s = LEAPSettings()
    assert (s.final_weight, s.anchor_weight, s.adjacent_weight, s.exit_weight) == (4.0, 12.0, 6.0, 1.0)
    assert (s.exit_slope, s.contrastive_weight, s.student_weight) == (5.0, 1.0, 0.7)
    assert (s.late_weight, s.redundancy_weight, s.exit_targets) == (0.0, 0.0, "convex")


def test_LEAPLoss_classic_fit_pulls_layers_to_final(leap_student, leap_student_dir, leap_sentences, make_tiny_model):
    """model.fit with InputExample(texts=[s]) and no labels, frozen copy as teacher: the mean cosine of the
    intermediate layers to the final one goes up (the point of the loss)."""
    teacher = make_tiny_model(leap_student_dir)
    before = _cos_to_final(leap_student, leap_sentences, [2, 3])
    loss = LEAPLoss(leap_student, teacher=teacher, exit_min_layer=2)
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
    loss = LEAPLoss(student, teacher=from_pretrained(leap_student_dir), exit_min_layer=2)
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
    for term in ("final", "exit", "contrastive", "anchor", "adjacent"):
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


@pytest.mark.parametrize("wrapper", ["MatryoshkaLoss", "AdaptiveLayerLoss"])
def test_LEAPLoss_under_a_wrapper_loss_raises_a_clear_error(leap_student, leap_sentences, wrapper):
    """sentence-transformers' wrapper losses add up their base loss's results: LEAPLoss refuses with a TypeError
    that says why and what to use (issue 16), while the Trainer still gets a plain dict."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    loss = LEAPLoss(leap_student, exit_min_layer=2)
    assert isinstance(loss([leap_student.preprocess(leap_sentences[:8])]), dict)
    if wrapper == "MatryoshkaLoss":
        wrapped = st_losses.MatryoshkaLoss(leap_student, loss, matryoshka_dims=[32, 16])
    else:
        from st_leap.model import as_early_exit

        as_early_exit(leap_student)
        wrapped = st_losses.AdaptiveLayerLoss(leap_student, loss, n_layers_per_step=1)
    with pytest.raises(TypeError, match=f"LEAPLoss cannot be wrapped by .*{wrapper[:10]}.*Use LEAPLoss on its own"):
        wrapped([leap_student.preprocess(leap_sentences[:8])], None)
