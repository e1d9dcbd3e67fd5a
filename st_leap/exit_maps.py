"""Exit maps (st_leap's own addition, not part of the LEAP paper): one affine map per layer that carries the
embedding a model computes from layer ``l`` into the final embedding space, of the model itself or of another
model (the teacher, or the model that built your index).

A sample that stops at layer ``l`` (a static cut with ``truncate_layers``, or per-sample exit) gets
``y = x_l W_l + b_l``, with ``x_l`` the pipeline's sentence embedding from layer ``l`` (pooling, dense and
normalization included), then L2-normalized when the pipeline normalizes. The maps are fitted in closed form
(ridge regression, the ridge chosen on held-out texts) from unlabeled texts in one pass of the model over them
(:func:`fit_exit_maps`), are saved with the model as one more module (:class:`ExitMaps`), and can be trained further
inside
:class:`~st_leap.losses.LEAPLoss` (``use_exit_maps=True``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize
from sentence_transformers.base.modules.module import Module
from sentence_transformers.util import batch_to_device
from torch import Tensor, nn
from tqdm.auto import tqdm

#: Ridge strengths tried by :func:`fit_exit_maps`, as multiples of the number of fitting texts (lambda = c * n).
#: Strong ridges (1e-2 * n) shrink the maps toward the mean and make retrieval worse than no map at all.
RIDGE_GRID = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3)

#: The fewest non-empty texts :func:`fit_exit_maps` fits on (a tenth is held out to choose the ridge).
MIN_FIT_TEXTS = 20


class ExitMaps(Module):
    """Per-layer affine maps into the final embedding space, applied at each sample's exit layer (ours).

    Placed last in a ``SentenceTransformer`` (after ``Normalize``). It reads ``sentence_embedding`` and the
    ``exit_layer`` that :class:`~st_leap.EarlyExitTransformer` writes (full depth when a module does not write it),
    and replaces the embedding by ``x @ weight[l - 1] + bias[l - 1]``, re-normalized when ``normalize``. A batch of
    mixed exit layers is mapped in one batched operation. ``encode(..., exit_maps=False)`` skips the maps (the
    embedding the model computes without them).

    Layers not listed in ``fitted_layers`` keep the identity (the final layer, when the target is the model itself).

    Args:
        num_layers: The encoder depth L (one map per layer).
        in_features: Width of the embedding the maps read.
        out_features: Width of the target space. Defaults to ``in_features``.
        normalize: L2-normalize the mapped embedding (True when the pipeline ends with ``Normalize``).
        fitted_layers: The 1-based layers that carry a fitted map (others are the identity).
        target: A readable name of the target space (``"self"`` or the target model's name).
        ridge: ``{layer: lambda / n}`` chosen on held-out texts when fitted in closed form.

    Example:
        ::

            import st_leap
            from st_leap.exit_maps import fit_exit_maps

            model = st_leap.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
            fit_exit_maps(model, my_texts)                     # adds an ExitMaps module to the model
            emb = model.encode(texts, truncate_layers=3)       # layer 3, mapped into the final space
            model.save("minilm-with-maps")                     # st_leap.load("minilm-with-maps") restores them
    """

    config_keys: list[str] = ["num_layers", "in_features", "out_features", "normalize", "fitted_layers", "target", "ridge"]
    forward_kwargs: set[str] = {"exit_maps"}

    def __init__(
        self,
        num_layers: int,
        in_features: int,
        out_features: int | None = None,
        normalize: bool = True,
        fitted_layers: Sequence[int] | None = None,
        target: str = "self",
        ridge: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_layers", num_layers), ("in_features", in_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        out_features = in_features if out_features is None else out_features
        if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
            raise ValueError(f"out_features must be an int >= 1, got {out_features!r}")
        fitted = sorted({int(layer) for layer in (fitted_layers or [])})
        if fitted and not 1 <= fitted[0] <= fitted[-1] <= num_layers:
            raise ValueError(f"fitted_layers must lie in 1..{num_layers}, got {fitted}")
        self.num_layers = num_layers
        self.in_features = in_features
        self.out_features = out_features
        self.normalize = bool(normalize)
        self.fitted_layers = fitted
        self.target = target
        self.ridge = {str(k): float(v) for k, v in (ridge or {}).items()}
        eye = torch.eye(in_features, out_features)
        self.weight = nn.Parameter(eye.repeat(num_layers, 1, 1))
        self.bias = nn.Parameter(torch.zeros(num_layers, out_features))

    def get_embedding_dimension(self) -> int:
        return self.out_features

    def set_map(self, layer: int, weight: Tensor, bias: Tensor) -> None:
        """Set the map of one 1-based layer (marks it fitted)."""
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in 1..{self.num_layers}, got {layer}")
        with torch.no_grad():
            self.weight[layer - 1].copy_(weight.reshape(self.in_features, self.out_features))
            self.bias[layer - 1].copy_(bias.reshape(self.out_features))
        self.fitted_layers = sorted({*self.fitted_layers, int(layer)})

    def map(self, embeddings: Tensor, exit_layer: Tensor | int) -> Tensor:
        """Map ``(B, in_features)`` embeddings computed at 1-based ``exit_layer`` (one int, or one per row)."""
        if isinstance(exit_layer, int):
            out = embeddings @ self.weight[exit_layer - 1] + self.bias[exit_layer - 1]
        else:
            index = exit_layer.to(device=embeddings.device, dtype=torch.long) - 1
            # All L maps of every row at once, then each row's own: one batched product, no per-sample weights.
            every = torch.einsum("bd,lde->ble", embeddings, self.weight)
            out = every[torch.arange(embeddings.shape[0], device=embeddings.device), index] + self.bias[index]
        return F.normalize(out, p=2, dim=-1) if self.normalize else out

    def forward(self, features: dict[str, Any], exit_maps: bool = True, **kwargs: Any) -> dict[str, Any]:
        if not exit_maps:
            return features
        embeddings = features["sentence_embedding"]
        exit_layer = features.get("exit_layer")
        if exit_layer is None:
            exit_layer = torch.full((embeddings.shape[0],), self.num_layers, dtype=torch.long)
        features["sentence_embedding"] = self.map(embeddings, exit_layer)
        return features

    def on_model_ready(self, model: Any) -> None:
        """Check the maps against the model they were loaded into: its depth and embedding width."""
        first = model[0]
        config = getattr(getattr(first, "auto_model", None), "config", None)
        depth = getattr(config, "num_hidden_layers", None)
        if depth is not None and int(depth) != self.num_layers:
            raise ValueError(
                f"ExitMaps hold {self.num_layers} layer maps but the model's encoder has {depth} layers: these maps "
                "belong to another model (fit them again with st_leap.exit_maps.fit_exit_maps)"
            )

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> ExitMaps:
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder, "revision": revision,
               "local_files_only": local_files_only}
        where = str(Path(model_name_or_path) / subfolder)
        try:
            config = cls.load_config(model_name_or_path=model_name_or_path, **hub)
            config = {key: value for key, value in config.items() if key in cls.config_keys}
            module = cls(**config)
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(f"{where}/{cls.config_file_name}: not a valid exit maps config ({error})") from None
        path = cls.load_file_path(model_name_or_path, filename="model.safetensors", **hub)
        if path is None:
            raise ValueError(f"{where}: the exit maps weights (model.safetensors) are missing")
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{path}: corrupt exit maps file ({error})") from None
        expected = {"weight": tuple(module.weight.shape), "bias": tuple(module.bias.shape)}
        found = {key: tuple(value.shape) for key, value in tensors.items()}
        if found != expected:
            raise ValueError(f"{path}: exit maps of shapes {found} do not match its config, which needs {expected}")
        if not all(torch.isfinite(value).all() for value in tensors.values()):
            raise ValueError(f"{path}: the exit maps hold non-finite values")
        with torch.no_grad():
            module.weight.copy_(tensors["weight"])
            module.bias.copy_(tensors["bias"])
        return module

    def __repr__(self) -> str:
        return f"ExitMaps({self.get_config_dict()})"


# ---------------------------------------------------------------------------------------------------------------
# Per-layer embeddings and the closed-form fit


def exit_maps_module(model: SentenceTransformer) -> ExitMaps | None:
    """The model's :class:`ExitMaps` module, or None."""
    return next((module for module in model if isinstance(module, ExitMaps)), None)


def post_modules(model: SentenceTransformer) -> list[nn.Module]:
    """The modules after the transformer that compute a sentence embedding from token states, maps excluded."""
    return [module for module in list(model)[1:] if not isinstance(module, ExitMaps)]


def embed_layer(modules: Sequence[nn.Module], token_states: Tensor, attention_mask: Tensor) -> Tensor:
    """The sentence embedding the pipeline ``modules`` computes from one layer's token states."""
    features: dict[str, Any] = {"token_embeddings": token_states, "attention_mask": attention_mask}
    for module in modules:
        features = module(features)
    return features["sentence_embedding"]


def mapped_layer_embeddings(
    model: SentenceTransformer,
    hidden_states: Sequence[Tensor],
    attention_mask: Tensor,
    layers: Iterable[int],
    maps: ExitMaps | None = None,
) -> dict[int, Tensor]:
    """``{layer: (B, D)}`` the sentence embedding the model's pipeline computes from each layer's token states
    (``hidden_states[layer]``), through that layer's exit map when ``maps`` is given: what a text exiting there
    gets from ``encode``. The layer-wise losses train on it."""
    modules = post_modules(model)
    out = {}
    for layer in layers:
        embedding = embed_layer(modules, hidden_states[layer], attention_mask)
        out[layer] = maps.map(embedding, layer) if maps is not None else embedding
    return out


def hidden_state_batches(
    model: SentenceTransformer, texts: Sequence[str], batch_size: int, show_progress_bar: bool, desc: str
) -> Iterator[tuple[list[int], dict[str, Tensor], tuple[Tensor, ...]]]:
    """Every layer's token states of ``texts``, batch by batch, longest texts first (fewer pad tokens, as
    ``encode``): yields ``(text indices, features, (embedding output, layer 1, ..., layer L))``. The one pass over
    all hidden states that the per-layer diagnostics and the exit-map fit share."""
    transformer = model[0]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # like encode: fewer pad tokens
    accepted = {"input_ids", "attention_mask"}
    if "token_type_ids" in inspect.signature(transformer.auto_model.forward).parameters:
        accepted.add("token_type_ids")
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not show_progress_bar):
        idx = order[start : start + batch_size]
        features = batch_to_device(model.preprocess([texts[i] for i in idx]), model.device)
        inputs = {k: features[k] for k in accepted if k in features}
        hidden_states = transformer.auto_model(**inputs, output_hidden_states=True).hidden_states
        yield idx, features, hidden_states


@torch.inference_mode()
def layer_embeddings(
    model: SentenceTransformer, texts: Sequence[str], batch_size: int = 64, show_progress_bar: bool = True
) -> Tensor:
    """``(N, L, D)`` sentence embeddings of every text computed from each layer ``1..L`` (index ``l - 1``), with the
    model's own pooling, dense and normalization, without exit maps: what ``encode(truncate_layers=l,
    exit_maps=False)`` returns, from one pass over the texts."""
    if not texts:
        raise ValueError("layer_embeddings needs at least one text")
    was_training = model.training
    model.eval()
    modules = post_modules(model)
    out: Tensor | None = None
    try:
        for idx, features, hidden_states in hidden_state_batches(
            model, list(texts), batch_size, show_progress_bar, "Layer embeddings"
        ):
            mask = features["attention_mask"]
            layers = torch.stack([embed_layer(modules, h, mask) for h in hidden_states[1:]], dim=1).float().cpu()
            if out is None:
                out = torch.empty(len(texts), layers.shape[1], layers.shape[2])
            out[torch.tensor(idx)] = layers
    finally:
        model.train(was_training)
    assert out is not None
    return out


def ridge_solutions(x: Tensor, y: Tensor, lambdas: Sequence[float]) -> Iterator[tuple[float, Tensor, Tensor]]:
    """Ridge regressions ``y ~ x W + b`` (intercept not penalized) for each ``lambda``, from one
    eigendecomposition of the centred Gram matrix: yields ``(lambda, W, b)``."""
    x, y = x.double(), y.double()
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    eigenvalues, eigenvectors = torch.linalg.eigh(xc.T @ xc)
    projected = eigenvectors.T @ (xc.T @ yc)
    for lam in lambdas:
        weight = eigenvectors @ (projected / (eigenvalues.clamp_min(0) + lam).unsqueeze(1))
        yield lam, weight, mean_y - mean_x @ weight


def _mean_cos(a: Tensor, b: Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).mean())


@dataclass
class ExitMapsFit:
    """What :func:`fit_exit_maps` did: per layer the chosen ridge (``lambda / n``) and the held-out mean cosine to
    the target without the map (``None`` when widths differ) and with it."""

    maps: ExitMaps
    num_texts: int
    num_heldout: int
    target: str
    layers: dict[int, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"num_texts": self.num_texts, "num_heldout": self.num_heldout, "target": self.target,
                "layers": {str(k): v for k, v in self.layers.items()}}


def fit_exit_maps(
    model: SentenceTransformer,
    texts: Sequence[str] | None = None,
    target: SentenceTransformer | None = None,
    *,
    corpus: Any = None,
    max_corpus_texts: int = 20_000,
    target_embeddings: Any = None,
    layers: Sequence[int] | None = None,
    ridge_grid: Sequence[float] = RIDGE_GRID,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 64,
    target_name: str | None = None,
    show_progress_bar: bool = True,
) -> ExitMapsFit:
    """Fit one affine exit map per layer in closed form and put them into ``model`` (replacing earlier maps).

    The inputs are the model's own embeddings of ``texts`` from each layer (:func:`layer_embeddings`); the outputs are
    the target's final embeddings of the same texts: the model's own full-depth embedding (``target=None``; the last
    layer then keeps the identity) or another model's (``target``: the teacher or the model that built your index;
    then every layer, the last included, gets a map). Each map is a ridge regression; its strength is chosen per layer
    from ``ridge_grid`` (multiples of the number of fitting texts) by the mean cosine to the target on a held-out
    ``heldout_fraction`` of the texts, then refitted on all texts. Fit on texts like those the role will encode
    (short sentences for queries, passages for documents).

    Args:
        model: An st_leap model (``st_leap.from_pretrained``).
        texts: Unlabeled texts, a few thousand or more (at least 10 times the embedding width is a good start).
        corpus: Instead of ``texts``: the documents of your index (a BEIR folder, a ``corpus.jsonl[.gz]``, a text
            file of one document a line, or a :class:`st_leap.corpus.Corpus`), turned into query-like texts (titles,
            sentences, short spans; :func:`st_leap.corpus.query_texts`). Maps fitted on the index's own documents
            keep far more of a shallow query's retrieval quality than maps fitted on generic sentences.
        max_corpus_texts: How many query-like texts of ``corpus`` to fit on.
        target_embeddings: The target's final embeddings of ``texts`` (``(N, D')``, rows in ``texts`` order) when
            you have them already (a teacher cache, say); the target then does not encode the texts again.
        target: The model whose final space to map into. Default: the model itself.
        layers: The 1-based layers to fit. Default: every layer below the last (all of them with a ``target``).
        ridge_grid: Candidate ridge strengths as multiples of the number of fitting texts.
        heldout_fraction: Share of ``texts`` held out to choose the ridge.
        seed: Seed of the held-out split.
        batch_size: Encode batch size.
        target_name: Name of the target space recorded with the maps. Default: ``"self"`` or the target's name.
        show_progress_bar: Progress bars while embedding.

    Returns:
        An :class:`ExitMapsFit` with the module (now in ``model``) and per-layer held-out cosines.
    """
    if (texts is None) == (corpus is None):
        raise ValueError("pass either texts or corpus")
    if corpus is not None:
        from st_leap.corpus import Corpus, query_texts, read_corpus

        corpus = corpus if isinstance(corpus, Corpus) else read_corpus(corpus)
        texts, _ = query_texts(corpus, max_texts=max_corpus_texts, seed=seed)
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    if target_embeddings is not None and len(kept) != len(texts):
        raise ValueError("with target_embeddings every text must be a non-empty string (rows are matched by position)")
    texts = kept
    if len(texts) < MIN_FIT_TEXTS:
        raise ValueError(f"fit_exit_maps needs at least {MIN_FIT_TEXTS} non-empty texts, got {len(texts)}")
    if not 0.0 < heldout_fraction < 0.5:
        raise ValueError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction!r}")
    if not ridge_grid or any(not (isinstance(c, (int, float)) and c > 0 and math.isfinite(c)) for c in ridge_grid):
        raise ValueError(f"ridge_grid must hold numbers > 0, got {ridge_grid!r}")
    old = exit_maps_module(model)
    x = layer_embeddings(model, texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    num_layers, width = x.shape[1], x.shape[2]
    if target is None and target_embeddings is None:
        y = x[:, -1]
        default_layers = list(range(1, num_layers))
    else:
        if target_embeddings is not None:
            y = torch.as_tensor(target_embeddings, dtype=torch.float32).cpu()
            if y.dim() != 2 or len(y) != len(texts):
                raise ValueError(f"target_embeddings must have one row per text ({len(texts)}), got {tuple(y.shape)}")
        else:
            y = target.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_tensor=True)
            y = y.float().cpu()
        default_layers = list(range(1, num_layers + 1))
    layers = sorted({int(layer) for layer in layers}) if layers is not None else default_layers
    if y.shape[1] != width and layers != default_layers:
        raise ValueError("a target of another width needs a map for every layer: leave layers out")
    normalize = any(isinstance(module, Normalize) for module in post_modules(model))
    if target is not None:
        card = target.model_card_data
        default_name = str(getattr(card, "model_name", None) or getattr(card, "base_model", None) or "target")
    else:
        default_name = "self" if target_embeddings is None else "target"
    name = target_name or default_name
    maps = ExitMaps(num_layers, width, int(y.shape[1]), normalize=normalize, target=name)

    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(texts), generator=generator)
    n_heldout = max(1, round(heldout_fraction * len(texts)))
    heldout, fitting = permutation[:n_heldout], permutation[n_heldout:]
    fit = ExitMapsFit(maps, len(texts), n_heldout, name)
    for layer in layers:
        x_layer = x[:, layer - 1]
        best = None
        for lam, weight, bias in ridge_solutions(x_layer[fitting], y[fitting], [c * len(fitting) for c in ridge_grid]):
            score = _mean_cos(x_layer[heldout].double() @ weight + bias, y[heldout])
            if best is None or score > best[1]:
                best = (lam / len(fitting), score)
        (_, weight, bias), = ridge_solutions(x_layer, y, [best[0] * len(texts)])
        maps.set_map(layer, weight.float(), bias.float())
        before = _mean_cos(x_layer[heldout], y[heldout]) if y.shape[1] == width else None
        fit.layers[layer] = {"ridge": best[0], "heldout_cosine_before": before, "heldout_cosine": best[1]}
        maps.ridge[str(layer)] = best[0]
    if old is not None:
        index = next(i for i, module in enumerate(model) if module is old)
        model._modules[str(index)] = maps
    else:
        model.append(maps)
    maps.to(model.device)
    return fit
