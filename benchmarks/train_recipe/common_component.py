"""Split each layer's pooled state into the component shared by all sentences and the per-sentence part.

    HF_HUB_OFFLINE=1 python -m benchmarks.train_recipe.common_component [MODEL ...] [--sentences 600]

For every layer l of each model (default: the packaged all-MiniLM-L6-v2) over the first STS-B test sentences:
``|mu_l|`` (norm of the mean pooled state), the mean norm of the deviation ``p_l - mu_l``, the cosine of ``mu_l``
with ``mu_L``, the mean cosine of the deviations with the final layer's, and the mean ``cos(p_l, p_L)``. It
shows *why* a layer is far from the final one: a shared offset (which training removes quickly) or the
sentence-specific content (which is the slow part). See docs/training.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from st_leap import resources
from st_leap.diagnostics import layer_pooled_states
from st_leap.model import from_pretrained


def table(model_path: str, num_sentences: int) -> str:
    model = from_pretrained(resources.resolve_model(model_path))
    pooled = layer_pooled_states(model, resources.stsb_sentences("test")[:num_sentences], batch_size=64)
    num_layers = pooled.shape[1] - 1
    mu = pooled.mean(0)
    final_dev = pooled[:, num_layers] - mu[num_layers]
    lines = [
        f"### {model_path}",
        "",
        "| layer | norm of mean state | mean norm of deviation | cos(mean_l, mean_L) | cos(dev_l, dev_L) | cos(p_l, p_L) |",
        "|---|---|---|---|---|---|",
    ]
    for layer in range(1, num_layers + 1):
        dev = pooled[:, layer] - mu[layer]
        lines.append(
            f"| {layer} | {mu[layer].norm():.2f} | {dev.norm(dim=1).mean():.2f} | "
            f"{F.cosine_similarity(mu[layer], mu[num_layers], dim=0):.3f} | "
            f"{F.cosine_similarity(dev, final_dev).mean():.3f} | "
            f"{F.cosine_similarity(pooled[:, layer], pooled[:, num_layers]).mean():.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["minilm"])
    parser.add_argument("--sentences", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("\n".join(table(m, args.sentences) for m in args.models))


if __name__ == "__main__":
    main()
