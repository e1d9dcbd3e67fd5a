"""Model cards of st_leap models, written by sentence-transformers' own model-card machinery.

:class:`LEAPModelCardData` is sentence-transformers' ``SentenceTransformerModelCardData`` with what a reader of
an early-exit model needs: that it is one (LEAP, arXiv 2605.01058), its exit defaults, measured exit rate and
speed-up where st_leap measured them, how to install and load it (``pip install st-leap``, ``st_leap.load`` or
``trust_remote_code=True``), and the LEAP citation. :func:`st_leap.model.as_early_exit` installs it, so
converting, calibrating, training and saving all write such a card instead of copying the base model's card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from st_leap.losses.leap import LEAP_CITATION

LEAP_TAGS = ("st-leap", "early-exit", "leap")


@dataclass
class LEAPModelCardData(SentenceTransformerModelCardData):
    """Model card data of an st_leap model (see the module docstring).

    Attributes:
        leap_measurements: Measured figures to show on the card (for example ``{"STS-B dev Spearman (full depth)":
            0.87, "exit rate": "38%"}``); st_leap's calibration fills it. Empty: the card says nothing was measured.
    """

    leap_measurements: dict[str, Any] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tags = list(dict.fromkeys([*(self.tags or []), *LEAP_TAGS]))

    @classmethod
    def from_card_data(cls, card: SentenceTransformerModelCardData) -> LEAPModelCardData:
        """The same card data (every field, computed ones included) as an st_leap card."""
        if isinstance(card, cls):
            return card
        new = cls(**{f.name: getattr(card, f.name) for f in fields(card) if f.init})
        for f in fields(card):
            if not f.init and f.name not in ("template_path", "tags"):
                setattr(new, f.name, getattr(card, f.name))
        return new

    def get_default_model_name(self) -> str:
        base = f" based on {self.base_model}" if self.base_model else ""
        return f"st_leap early-exit model (LEAP){base}"

    def _exit_defaults(self) -> dict[str, Any]:
        module = self.model[0] if self.model is not None else None
        return {key: getattr(module, key, None) for key in ("exit_threshold", "exit_patience", "exit_min_layer", "truncate_layers")}

    def generate_usage_snippet(self) -> str:
        snippet = super().generate_usage_snippet()
        snippet = snippet.replace("from sentence_transformers import SentenceTransformer", "import st_leap")
        snippet = re.sub(
            r'model = SentenceTransformer\("([^"]*)"\)',
            r'model = st_leap.load("\1")  # or SentenceTransformer("\1", trust_remote_code=True)',
            snippet,
        )
        exit_usage = "\n".join(
            [
                "",
                "With early exit (the saved defaults apply when no keyword argument is given):",
                "",
                "```python",
                "embeddings = model.encode(sentences, exit_threshold=0.95)          # per-text early exit",
                "outputs = model.encode(sentences, exit_threshold=0.95, output_value=None)",
                'print([int(o["exit_layer"]) for o in outputs])                      # where each text stopped',
                "```",
                "",
            ]
        )
        return self.leap_section() + "\n" + snippet + exit_usage

    def leap_section(self) -> str:
        """Markdown that says what the model is, its exit defaults, what was measured and how to install it."""
        module = self.model[0] if self.model is not None else None
        depth = getattr(module, "num_layers", None)
        defaults = self._exit_defaults()
        lines = [
            "This is an **early-exit** model: its first module is st_leap's `EarlyExitTransformer` "
            "([LEAP, arXiv 2605.01058](https://arxiv.org/abs/2605.01058)). With an exit threshold, each text stops "
            "at the first layer `l >= exit_min_layer` where the cosine between the mean-pooled states of layers "
            f"`l` and `l - exit_patience` reaches the threshold{f' (the encoder has {depth} layers)' if depth else ''}.",
            "",
            "Install st_leap next to sentence-transformers:",
            "",
            "```bash",
            "pip install -U st-leap",
            "```",
            "",
            "Exit defaults saved with this model (an `encode` keyword argument overrides them; a mapping sets them per "
            "role: `query` for `encode_query`, `document` for `encode_document`, `default` for `encode`):",
            "",
            "| setting | value |",
            "|---|---|",
            *(f"| `{key}` | `{value}` |" for key, value in defaults.items()),
            "",
        ]
        if self.leap_measurements:
            lines += ["Measured by st_leap:", "", "| measurement | value |", "|---|---|"]
            lines += [f"| {key} | {value} |" for key, value in self.leap_measurements.items()]
            lines.append("")
        else:
            lines += ["No exit rate or speed-up was measured for this card; `st-leap calibrate` measures both.", ""]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        citations = dict(data.get("citations") or {})
        if not any("2605.01058" in text for text in citations.values()):  # LEAPLoss already cites it after training
            citations["LEAP"] = LEAP_CITATION
        data["citations"] = citations
        return data


def install_card_data(model: Any) -> LEAPModelCardData:
    """Give ``model`` an st_leap model card (in place) and make sure ``save`` writes a new card instead of reusing
    the base model's README."""
    card = LEAPModelCardData.from_card_data(model.model_card_data)
    card.register_model(model)
    model.model_card_data = card
    model._model_card_text = None
    return card
