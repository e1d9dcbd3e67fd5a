"""Worker for test_leap_ddp.py: run under `torchrun --nproc_per_node 2`; trains a tiny model with LEAPLoss in
SentenceTransformerTrainer (gloo, CPU) and writes, per rank, a checksum of the trained weights and the logs."""

from __future__ import annotations

import json
import os
import sys

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.base.modules import Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from st_leap.losses import LEAPLoss


def main(model_dir: str, out_dir: str) -> None:
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    student = SentenceTransformer(modules=[Transformer(model_dir, max_seq_length=16), Pooling(32)], device="cpu")
    teacher = SentenceTransformer(modules=[Transformer(model_dir, max_seq_length=16), Pooling(32)], device="cpu")
    initial = sum(float(p.detach().double().sum()) for p in student.parameters())
    words = "a the man woman dog cat is eating playing on in food ball guitar park red blue".split()
    sentences = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 5)) for i in range(64)]
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir,
        max_steps=6,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        warmup_steps=1,
        logging_steps=3,
        save_strategy="no",
        report_to="none",
        ddp_backend="gloo",
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
    )
    loss = LEAPLoss(student, teacher=teacher, exit_min_layer=2)
    trainer = SentenceTransformerTrainer(
        model=student, args=args, loss=loss, train_dataset=Dataset.from_dict({"sentence": sentences})
    )
    trainer.train()
    result = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "initial": initial,
        "checksum": sum(float(p.detach().double().sum()) for p in student.parameters()),
        "teacher_checksum": sum(float(p.detach().double().sum()) for p in teacher.parameters()),
        "logged": sorted({k for entry in trainer.state.log_history for k in entry}),
        "steps": trainer.state.global_step,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
