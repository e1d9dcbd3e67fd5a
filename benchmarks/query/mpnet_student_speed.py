"""Build the query side of a small student for an all-mpnet-base-v2 index, untrained, to time it (speed only).

3 of all-MiniLM-L6-v2's layers (``--init spread``) with a closed-form 384 -> 768 exit map fitted on 2,000 STS-B
train sentences toward all-mpnet-base-v2's embeddings, saved as the ``Router`` model that
``st-leap fit-query-encoder mpnet --student minilm --depth 3`` saves (documents: all-mpnet-base-v2). Training changes
its weights, not its architecture, so its speed is the trained student's; its quality is not measured here.

    HF_HUB_OFFLINE=1 python -m benchmarks.query.mpnet_student_speed
    HF_HUB_OFFLINE=1 python -m benchmarks.serving.lean --models mpnet=mpnet mpnet-int8=int8:mpnet \\
        student-untrained-int8=int8:runs/mpnet_speed/student-untrained --out benchmarks/results/query/mpnet_student_speed
"""

from __future__ import annotations

import argparse

import torch
from sentence_transformers import SentenceTransformer

from st_leap import resources
from st_leap.exit_maps import fit_exit_maps
from st_leap.query_encoder import build_router, init_student


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/mpnet_speed/student-untrained")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--texts", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    index = SentenceTransformer(resources.mpnet_path(), device="cpu")
    texts = resources.stsb_sentences("train")[: args.texts]
    student = init_student(resources.minilm_path(), args.depth, "spread")
    fit_exit_maps(student, texts, target_embeddings=index.encode(texts, batch_size=64), show_progress_bar=False)
    build_router(student, index).save(args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
