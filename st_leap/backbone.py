"""The pieces of a Hugging Face encoder that st_leap runs layer by layer: its embeddings, its layer stack and the
per-layer extras (MPNet's relative position bias), for every supported architecture.

A leaf of the package: the layer loop (:mod:`st_leap.modules`) and the exporters (:mod:`st_leap.backends`) both
read encoders through it.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

# model_type -> how to reach the embeddings and the layer stack. MiniLM checkpoints are model_type "bert".
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "mpnet", "distilbert")


class Backbone:
    """The pieces of a Hugging Face encoder that the layer loop needs: its embeddings, its layer stack, and the
    extra per-layer keyword arguments that depend on the (possibly trimmed) batch (MPNet's position bias).

    Plain methods, no closures, so a model holding it pickles (multi-process encoding, ``torch.save``).
    """

    def __init__(self, model: nn.Module) -> None:
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"EarlyExitTransformer does not support model_type {model_type!r} ({type(model).__name__}). "
                f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)} "
                "(BERT family incl. MiniLM, RoBERTa, XLM-R, CamemBERT; MPNet; DistilBERT)."
            )
        self.model = model
        self.model_type = model_type
        self.layers: nn.ModuleList = model.transformer.layer if model_type == "distilbert" else model.encoder.layer

    def embed(self, features: dict[str, Tensor]) -> Tensor:
        if self.model_type == "distilbert":
            return self.model.embeddings(features["input_ids"])
        if self.model_type == "mpnet":
            return self.model.embeddings(input_ids=features["input_ids"])
        return self.model.embeddings(input_ids=features["input_ids"], token_type_ids=features.get("token_type_ids"))

    def layer_mask(self, hidden: Tensor, mask: Tensor) -> Tensor | None:
        """The attention mask the layers take, for the running ``(B, T)`` mask."""
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask)

    def layer_kwargs(self, hidden: Tensor) -> dict[str, Tensor]:
        if self.model_type == "mpnet":
            return {"position_bias": self.model.encoder.compute_position_bias(hidden)}
        return {}


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The layer stack of a supported Hugging Face encoder (``model.encoder.layer`` for BERT and MPNet,
    ``model.transformer.layer`` for DistilBERT): deleting from it truncates the model statically."""
    return Backbone(model).layers
