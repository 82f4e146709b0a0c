"""Two-process DistributedDataParallel on CPU (gloo, torchrun) against one process, tiny UFM."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist

from guiding_nc.training.config import TrainConfig
from guiding_nc.training.trainer import Trainer

WORKER = textwrap.dedent(
    """
    import json, sys
    import torch
    import torch.distributed as dist
    from guiding_nc.training.config import TrainConfig
    from guiding_nc.training.trainer import Trainer

    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    tr = Trainer(cfg)
    res = tr.fit()
    rank = dist.get_rank()
    torch.save({"U": tr.head.nearest.prox, "W": tr.head.weight, "ema": tr.head.ema.means,
                "features": tr.network.backbone.features.detach(), "step_losses": res["step_losses"],
                "history": res["history"], "world_size": tr.world_size},
               f"{sys.argv[2]}/rank{rank}.pt")
    dist.destroy_process_group()
    """
)


def _config(run_dir):
    return dict(name="ddp", run_dir=str(run_dir), dataset="ufm", model="ufm", method="implicit", num_classes=4,
                num_samples=32, feature_dim=16, batch_size=16, epochs=3, eval_every=1, checkpoint_every=0,
                record_step_losses=True, progress=False, verbose=False, device="cpu", timing="off")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_gloo_matches_single_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           json.dumps(_config(tmp_path / "ddp_run")), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0 = torch.load(out / "rank0.pt", weights_only=False)
    r1 = torch.load(out / "rank1.pt", weights_only=False)
    assert r0["world_size"] == r1["world_size"] == 2
    # every rank solved for the same nearest ETF from the same all-reduced class means
    assert torch.equal(r0["U"], r1["U"]) and torch.equal(r0["W"], r1["W"]) and torch.equal(r0["ema"], r1["ema"])
    assert r0["step_losses"] == r1["step_losses"]
    # only rank 0 wrote the run directory
    assert (tmp_path / "ddp_run" / "metrics.jsonl").exists()

    single = Trainer(TrainConfig.from_dict(_config(tmp_path / "single_run")))
    res = single.fit()
    assert len(res["step_losses"]) == len(r0["step_losses"]) == 6
    for a, b in zip(res["step_losses"], r0["step_losses"]):
        assert abs(a - b) < 1e-5
    assert torch.allclose(single.head.nearest.prox, r0["U"], atol=1e-4)
    assert torch.allclose(single.network.backbone.features.detach(), r0["features"], atol=1e-4)
    # evaluation metrics are aggregated over ranks: same numbers as one process
    for key in ("train_loss", "train_top1", "train_nc1", "train_nc3", "train_cosine_margin_mean"):
        assert abs(res["history"][-1][key] - r0["history"][-1][key]) < 1e-4, key
