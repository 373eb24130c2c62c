"""Quick dense-vs-sparse Adam step-time ratio for NeuMF f=32 on ml-1m-loo (60 alternating steps per path, b2048 and b256),
bare loop, one process: RECSYS_DATA_DIR=../shared/datasets python experiments/sparse_step_ratio.py (~1 min alone)."""
import sys, time, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pathlib import Path
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from recsys.tasks.base import get_family
from recsys.models import build_model
from recsys.tasks.optim import build_sparse_adam
torch.set_num_threads(2)
with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
    cfg = compose("config", overrides=["data=ml-1m-loo","model=neumf","model.factors=32","model.mlp_layers=[128,64,32]"])
fam = get_family("ranking"); data = fam.load_data(cfg)
spec = fam.model_spec(OmegaConf.to_container(cfg.model, resolve=True), data)
dm = fam.make_datamodule(data, cfg)
U, I, Y = dm.train_data.epoch_tensors(0)
for bs in (2048, 256):
    torch.manual_seed(0); md = build_model(spec); od = torch.optim.Adam(md.parameters(), lr=1e-3)
    torch.manual_seed(0); ms = build_model(spec); os_, _ = build_sparse_adam(ms, 1e-3)
    t = {"dense": 0.0, "sparse": 0.0}; k = 0
    for block in range(6):
        for name, m, o in (("dense", md, od), ("sparse", ms, os_)):
            t0 = time.perf_counter()
            for j in range(10):
                s = (k + j) * bs
                loss = torch.nn.functional.binary_cross_entropy_with_logits(m(U[s:s+bs], I[s:s+bs]), Y[s:s+bs])
                o.zero_grad(); loss.backward(); o.step()
            t[name] += time.perf_counter() - t0
        k += 10
    print(f"batch {bs}: dense {t['dense']:.2f}s sparse {t['sparse']:.2f}s for 60 steps each; sparse/dense speed {t['dense']/t['sparse']:.2f}x", flush=True)
