from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("_leap_ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def test_LEAPLoss_ddp_two_processes_gloo(leap_student_dir, tmp_path):
    """LEAPLoss trains under `torchrun --nproc_per_node 2` (DDP, gloo, CPU) in SentenceTransformerTrainer: both
    ranks run the same steps, end with identical student weights that differ from the start, the frozen live
    teacher is untouched, and the loss components are logged."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(WORKER),
        leap_student_dir,
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 6
    assert abs(ranks[0]["checksum"] - ranks[1]["checksum"]) < 1e-6  # DDP kept the replicas in sync
    assert abs(ranks[0]["checksum"] - ranks[0]["initial"]) > 1e-3  # and they were trained
    assert abs(ranks[0]["teacher_checksum"] - ranks[0]["initial"]) < 1e-6  # teacher = untouched copy of the init
    for term in ("final", "exit", "contrastive", "anchor", "adjacent"):
        assert any(k.endswith(term) for k in ranks[0]["logged"]), (term, ranks[0]["logged"])
