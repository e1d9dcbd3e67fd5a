from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules import Transformer
from torch import Tensor, nn

from st_leap.backbone import SUPPORTED_MODEL_TYPES, encoder_layers  # noqa: F401 (their home before)
from st_leap.backbone import Backbone as _Backbone
from st_leap.exit_policy import (
    ExitStats,
    converged,
    first_checked_layer,
    mean_pool,
    pooling_weights,
    resolve_exit_settings,
    role_of,
    validate_exit_settings,
)


class _ThreadExitStats(threading.local):
    """Each thread's exit counters, one per module: a server's threads never read each other's counts."""

    def __init__(self) -> None:
        self.by_module: weakref.WeakKeyDictionary[nn.Module, ExitStats] = weakref.WeakKeyDictionary()


_THREAD_STATS = _ThreadExitStats()


def _drop_output_capturing_hooks(model: nn.Module) -> None:
    """Remove the hidden-state capturing hooks of transformers (closures, not picklable) and mark the model so
    that transformers installs them again when they are next needed."""
    for module in model.modules():
        for hook_id, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__module__", "") == "transformers.utils.output_capturing":
                del module._forward_hooks[hook_id]
                module._forward_hooks_with_kwargs.pop(hook_id, None)
                module._forward_hooks_always_called.pop(hook_id, None)
        if getattr(module, "_output_capturing_hooks_installed", False):
            module._output_capturing_hooks_installed = False


class EarlyExitTransformer(Transformer):
    """A :class:`~sentence_transformers.base.modules.Transformer` whose samples stop at the first converged layer.

    Drop-in for ``Transformer``: it takes the same constructor arguments and, at full depth, computes exactly the
    same outputs. With an exit threshold, the encoder is stepped layer by layer; after layer ``l`` a sample exits
    when ``l >= exit_min_layer``, ``l > exit_patience`` and ``cos(p_l, p_{l - exit_patience}) >= exit_threshold``,
    with ``p_l`` the attention-masked mean of the layer's hidden states (LEAP, Algorithm 1; the rule itself lives in
    :mod:`st_leap.exit_policy`). The sample's ``token_embeddings`` are its exit layer's hidden states, so Pooling,
    Dense, Normalize and the rest of the pipeline compute its embedding from them. Exited samples leave the running
    batch and the batch is trimmed to the longest survivor, so later layers cost only what is left.

    ``truncate_layers`` is the static counterpart, the depth analogue of sentence-transformers' ``truncate_dim``:
    every sample runs exactly the first ``truncate_layers`` layers (what a copy of the model cut to that depth
    computes); with an exit threshold too, samples exit at or before that depth.

    The settings are ``encode`` keyword arguments (``model.encode(texts, exit_threshold=0.95)``,
    ``model.encode(texts, truncate_layers=3)``); their defaults are saved with the model, so a saved model keeps its
    operating point and tools that call ``encode`` without them (mteb, beir, evaluators) use it. In training mode
    the module always runs full depth.

    Every setting takes one value or a mapping from role to value, with the keys ``"query"`` (``encode_query``),
    ``"document"`` (``encode_document``) and ``"default"`` (plain ``encode`` and everything else); the role comes
    from sentence-transformers' ``task``. ``exit_threshold={"query": 0.95, "document": None, "default": None}``
    makes queries exit while documents and plain ``encode`` run the whole encoder, so documents stay where the
    full model puts them.

    Each output also carries ``exit_layer`` (1-based, ``L`` = full depth; ``model.encode(..., output_value=None)``
    returns it per text, :func:`st_leap.encode_with_exits` returns it with the embeddings and the call's counts,
    also from a multi-process pool). :attr:`exit_stats` counts where the samples of the calling thread's last
    ``encode`` call stopped (``encode`` puts the model in eval mode, which starts a new count); each thread has its
    own count.

    Args:
        model_name_or_path: Hugging Face model name or local path, as for ``Transformer``.
        exit_threshold: Default theta in (0, 1]; ``None`` (default) runs full depth unless ``encode`` asks for
            a threshold. One value or a per-role mapping (as every setting).
        exit_patience: Default k >= 1, the layer distance of the convergence check. Defaults to 1.
        exit_min_layer: Default l_min, the first layer at which a sample may exit. Defaults to half the depth
            (3 of 6 layers, 6 of 12).
        truncate_layers: Default static depth in [1, L]; ``None`` (default) runs the whole encoder.
        **kwargs: Every other ``Transformer`` argument (``model_kwargs``, ``processor_kwargs``, ``max_seq_length``...).

    Supported encoders: BERT family (BERT, MiniLM, RoBERTa, XLM-R, CamemBERT), MPNet and DistilBERT, on the
    ``torch`` backend.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from sentence_transformers.sentence_transformer.modules import Pooling
            from st_leap import EarlyExitTransformer

            transformer = EarlyExitTransformer("sentence-transformers/all-MiniLM-L6-v2", exit_threshold=0.95)
            model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())])
            embeddings = model.encode(["A man is eating food."], exit_min_layer=3)
            print(transformer.exit_stats.expected_layers)
    """

    config_keys: list[str] = Transformer.config_keys + [
        "exit_threshold",
        "exit_patience",
        "exit_min_layer",
        "truncate_layers",
    ]
    forward_kwargs: set[str] = {"exit_threshold", "exit_patience", "exit_min_layer", "truncate_layers", "task"}
    # Class-level defaults, so that a module pickled by an older st_leap still runs on torch.
    _segments: Any = None
    exit_backend: str = "torch"
    exit_quantize: str | None = None
    _export_dir: str | None = None

    def __init__(
        self,
        model_name_or_path: str,
        *,
        exit_threshold: float | None | Mapping[str, float | None] = None,
        exit_patience: int | Mapping[str, int] = 1,
        exit_min_layer: int | None | Mapping[str, int | None] = None,
        truncate_layers: int | None | Mapping[str, int | None] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name_or_path, **kwargs)
        if self.backend != "torch":
            raise ValueError(
                f"EarlyExitTransformer steps the encoder layer by layer and needs backend='torch', got {self.backend!r}"
            )
        self._setup_exits(exit_threshold, exit_patience, exit_min_layer, truncate_layers)

    @classmethod
    def from_transformer(
        cls,
        transformer: Transformer,
        *,
        exit_threshold: float | None | Mapping[str, float | None] = None,
        exit_patience: int | Mapping[str, int] = 1,
        exit_min_layer: int | None | Mapping[str, int | None] = None,
        truncate_layers: int | None | Mapping[str, int | None] = None,
    ) -> EarlyExitTransformer:
        """Wrap an already loaded ``Transformer`` (sharing its weights and tokenizer) instead of reloading it."""
        if type(transformer) is not Transformer:
            raise ValueError(f"Expected a sentence_transformers Transformer module, got {type(transformer).__name__}")
        if transformer.backend != "torch":
            raise ValueError(f"EarlyExitTransformer needs backend='torch', got {transformer.backend!r}")
        module = cls.__new__(cls)
        module.__dict__.update(transformer.__dict__)  # same submodules, tokenizer and config: nothing is copied
        module._setup_exits(exit_threshold, exit_patience, exit_min_layer, truncate_layers)
        return module

    def _setup_exits(self, exit_threshold: Any, exit_patience: Any, exit_min_layer: Any, truncate_layers: Any) -> None:
        """The layer stack and the validated exit defaults."""
        self._backbone = _Backbone(self.auto_model)
        self._segments: Any = None  # an exported encoder (st_leap.backends.SegmentBackbone), see use_backend
        self.exit_backend, self.exit_quantize, self._export_dir = "torch", None, None
        self.num_layers: int = len(self._backbone.layers)
        self.set_exit_defaults(exit_threshold, exit_patience, exit_min_layer, truncate_layers)

    def set_exit_defaults(self, exit_threshold: Any, exit_patience: Any, exit_min_layer: Any, truncate_layers: Any) -> None:
        """Validate and store the exit defaults (each one value or a per-role mapping); saved with the model."""
        (
            self.exit_threshold,
            self.exit_patience,
            self.exit_min_layer,
            self.truncate_layers,
        ) = validate_exit_settings(exit_threshold, exit_patience, exit_min_layer, truncate_layers, self.num_layers)

    def use_backend(
        self, backend: str = "torch", quantize: str | None = None, export_dir: str | None = None, model_path: str | None = None
    ) -> EarlyExitTransformer:
        """Run the encoder on ``"onnx"`` (ONNX Runtime) or ``"openvino"``, as exported segments (one per layer),
        optionally ``quantize="int8"``; ``"torch"`` goes back. The export is made on first use and cached (see
        :mod:`st_leap.backends`); the exit loop, compaction and the exit rule stay the same."""
        from st_leap import backends

        backends.check_backend(backend, quantize)
        if backend == "torch":
            self._segments, self.exit_backend, self.exit_quantize, self._export_dir = None, "torch", None, None
            return self
        folder = Path(export_dir) if export_dir else backends.default_export_dir(model_path, backend, quantize)
        backends.export_segments(self, folder, backend, quantize)
        self._segments = backends.SegmentBackbone(folder, backend, self._backbone.model_type)
        self.exit_backend, self.exit_quantize, self._export_dir = backend, quantize, str(folder)
        return self

    def exit_settings_for(self, task: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The validated exit settings a call with sentence-transformers' ``task`` runs with: ``overrides`` (the
        ``encode`` kwargs, one value or per role) over the module's defaults, resolved for the task's role."""
        theta, patience, min_layer, depth = resolve_exit_settings(
            overrides.get("exit_threshold", self.exit_threshold),
            overrides.get("exit_patience", self.exit_patience),
            overrides.get("exit_min_layer", self.exit_min_layer),
            overrides.get("truncate_layers", self.truncate_layers),
            self.num_layers,
            role_of(task),
        )
        return {"exit_threshold": theta, "exit_patience": patience, "exit_min_layer": min_layer, "truncate_layers": depth}

    @property
    def _right_padded(self) -> bool:
        return getattr(self.tokenizer, "padding_side", "right") == "right"

    @property
    def exit_stats(self) -> ExitStats:
        """Where the samples of this thread's last ``encode`` call stopped (each thread counts its own calls)."""
        stats = _THREAD_STATS.by_module.get(self)
        if stats is None:
            stats = _THREAD_STATS.by_module[self] = ExitStats(self.num_layers)
        return stats

    def reset_exit_stats(self) -> None:
        """Start a new count of exit layers in this thread (``encode`` does this at every call)."""
        _THREAD_STATS.by_module[self] = ExitStats(self.num_layers)

    def train(self, mode: bool = True) -> EarlyExitTransformer:
        if not mode:
            # SentenceTransformer.encode calls model.eval() once per call: exit_stats then covers exactly that call.
            self.reset_exit_stats()
        return super().train(mode)

    def preprocess(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        """Tokenize as ``Transformer`` does, after checking that every text is a string (a clear error that names
        the item instead of a tokenizer error)."""
        if isinstance(inputs, (list, tuple)):
            for index, item in enumerate(inputs):
                pair = isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item)
                if not (isinstance(item, (str, dict)) or pair):
                    raise TypeError(
                        f"inputs[{index}] must be a string (or a pair of strings), got {type(item).__name__}: "
                        f"{item!r:.80}"
                    )
        return super().preprocess(inputs, *args, **kwargs)

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        keys = ("exit_threshold", "exit_patience", "exit_min_layer", "truncate_layers")
        overrides = {key: kwargs.pop(key) for key in keys if key in kwargs}
        settings = self.exit_settings_for(kwargs.pop("task", None), **overrides)
        threshold, patience, min_layer = (
            settings["exit_threshold"], settings["exit_patience"], settings["exit_min_layer"]
        )
        depth = settings["truncate_layers"]
        depth = self.num_layers if depth is None or self.training else depth
        if threshold is not None and first_checked_layer(patience, min_layer) >= depth:
            threshold = None  # the rule cannot fire before the last layer that runs
        batch_size = features["input_ids"].shape[0]
        if self._segments is not None:
            if self.training:
                raise RuntimeError(f"The {self.exit_backend} backend is for inference; call use_backend('torch') to train")
            features[self.module_output_name], exit_layer = self._forward_with_exits(
                features, threshold, patience, min_layer, depth
            )
        elif self.training or (threshold is None and depth == self.num_layers):
            # Nothing can exit: the stock forward pass, bit for bit.
            features = super().forward(features, **kwargs)
            exit_layer = torch.full((batch_size,), self.num_layers, dtype=torch.long, device=features["input_ids"].device)
        else:
            features[self.module_output_name], exit_layer = self._forward_with_exits(
                features, threshold, patience, min_layer, depth
            )
        features["exit_layer"] = exit_layer
        if not self.training:
            self._count_exits(exit_layer)
        return features

    @torch.compiler.disable
    def _count_exits(self, exit_layer: Tensor) -> None:
        # Host-side bookkeeping (a thread-local counter): kept out of torch.compile's graphs.
        self.exit_stats.update(exit_layer)

    # The exit loop's control flow depends on the data (who exited, how long the survivors are), so torch.compile
    # runs it as Python and compiles what it calls (the layers): no graph breaks inside a traced loop.
    @torch.compiler.disable(recursive=False)
    def _forward_with_exits(
        self, features: dict[str, Tensor], threshold: float | None, patience: int, min_layer: int, depth: int
    ) -> tuple[Tensor, Tensor]:
        """Step the first ``depth`` layers, checking the exit rule unless ``threshold`` is None; return each
        sample's exit-layer hidden states ``(B, T, H)`` and exit layers ``(B,)`` (``depth`` for those that ran
        through)."""
        backbone = self._segments or self._backbone
        mask = features["attention_mask"]
        hidden = backbone.embed(features)
        output: Tensor | None = None  # allocated at the first exit: a batch where nothing exits pays no copy
        exit_layer = torch.full((hidden.shape[0],), depth, dtype=torch.long, device=hidden.device)
        rows = torch.arange(hidden.shape[0], device=hidden.device)  # original row of each running sample
        first_check = first_checked_layer(patience, min_layer)
        pooled_history: list[Tensor] = []  # p_{l-k} .. p_{l-1} of the running samples (a list: torch.compile traces it)

        attention_mask = backbone.layer_mask(hidden, mask)
        layer_kwargs = backbone.layer_kwargs(hidden)
        weights = pooling_weights(mask, hidden.dtype)
        for layer_index, layer in enumerate(backbone.layers[:depth], start=1):
            hidden = layer(hidden, attention_mask, **layer_kwargs)
            if isinstance(hidden, tuple):  # MPNet layers return (hidden_states, ...)
                hidden = hidden[0]
            if threshold is None or layer_index == depth or layer_index < first_check - patience:
                continue
            pooled = mean_pool(hidden, mask, weights)
            if layer_index >= first_check:
                done = converged(pooled, pooled_history[0], threshold)
                if done.any():
                    if output is None:
                        output = hidden.new_zeros(exit_layer.shape[0], mask.shape[1], hidden.shape[-1])
                    exited = rows[done]
                    output[exited, : hidden.shape[1]] = hidden[done]
                    exit_layer[exited] = layer_index
                    keep = ~done
                    if not keep.any():
                        return output, exit_layer
                    rows, hidden, mask, pooled = rows[keep], hidden[keep], mask[keep], pooled[keep]
                    pooled_history = [p[keep] for p in pooled_history]
                    if self._right_padded:  # trim the padding that only exited samples needed
                        length = int(mask.sum(dim=1).max())
                        hidden, mask = hidden[:, :length], mask[:, :length]
                    attention_mask = backbone.layer_mask(hidden, mask)
                    layer_kwargs = backbone.layer_kwargs(hidden)
                    weights = pooling_weights(mask, hidden.dtype)
            pooled_history = [*pooled_history[1 - patience :], pooled] if patience > 1 else [pooled]
        if output is None:
            return hidden, exit_layer
        output[rows, : hidden.shape[1]] = hidden
        return output, exit_layer

    def __getstate__(self) -> dict[str, Any]:
        # transformers installs closures as forward hooks the first time hidden states are requested
        # (``output_hidden_states=True``, e.g. by st_leap.diagnose): they cannot be pickled, which breaks
        # multi-process pools and torch.save. They are reinstalled on the next call that needs them.
        _drop_output_capturing_hooks(self.auto_model)
        state = super().__getstate__()
        if state.get("_segments") is not None:  # runtime sessions do not pickle: reopened from the export
            state = {**state, "_segments": None}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if getattr(self, "exit_backend", "torch") != "torch" and self._segments is None:
            from st_leap.backends import SegmentBackbone

            self._segments = SegmentBackbone(self._export_dir, self.exit_backend, self._backbone.model_type)

    def __repr__(self) -> str:
        return f"EarlyExitTransformer({dict(self.get_config_dict(), architecture=self.auto_model.__class__.__name__)})"
