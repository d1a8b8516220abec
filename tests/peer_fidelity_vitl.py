"""Opt-in measurement (not a test; about 33 min and 6 GB on 2 CPU cores): CLIP-AD's `init` defaults against the
independent transcription of the official computation in tests/test_peer_fidelity.py, on ViT-L-14-336 at 336 px
(seeded random OpenAI-format weights), stage by stage; plus the float32-anchor variant. The figures it printed
are in docs/method-choices.md.

    .venv/bin/python tests/peer_fidelity_vitl.py [WORK_DIR]
"""
import sys, time, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np, torch
torch.set_num_threads(2)
import test_peer_fidelity as t
from aaclip.benchmarks.family_parity import openai_format_weights
from aaclip.train.checkpoint import load_checkpoint
from click.testing import CliRunner
from aaclip.train.train_cli import main
import open_clip

work = Path(sys.argv[1] if len(sys.argv) > 1 else "peer-fidelity-vitl")
t0 = time.time()
w = openai_format_weights("ViT-L-14-336", work / "vitl.safetensors", 0)
t.NATIVE = 336
t.EPS, t.MIN_SAMPLES = 0.5, 15
res = CliRunner().invoke(main, ["init", "--method", "clip-ad", "--backbone", "ViT-L-14-336", "--clip-weights", str(w),
                                "--image-size", "336", "--classes", "disk", "--set", "sigma=8", "--out", str(work / "sdp"), "-q", "--force"])
assert res.exit_code == 0, res.output
cfg = json.loads((work / "sdp" / "config.json").read_text())
print("config:", cfg["backbone"]["activation"], cfg["backbone"]["pos_embed_resize"], cfg["anchor_precision"], f"{time.time()-t0:.0f}s", flush=True)
model = load_checkpoint(work / "sdp")
frames = t._frames(2)
x = t._official_input(frames)
with torch.no_grad():
    T = model.class_constants(["disk"])[0]
    feats, _ = model.encode_image(x)
    amap, cls = model.predict(x, T)
print("ours done", f"{time.time()-t0:.0f}s", flush=True)
model.config.anchor_precision = "float32"
with torch.no_grad():
    T32 = model.class_constants(["disk"])[0]
    amap32, cls32 = model.predict(x, T32)
print("float32 variant done", f"{time.time()-t0:.0f}s", flush=True)
del model
from safetensors.torch import load_file
clip = open_clip.create_model("ViT-L-14-336", force_quick_gelu=True, device="cpu").eval()
clip.load_state_dict(load_file(str(w)), strict=True)
tok = open_clip.get_tokenizer("ViT-L-14-336")
with torch.no_grad():
    T16, sizes = t._official_anchors(clip, tok, "disk"); print("clusters", sizes)
    ofeats, omap, ocls = t._official_sdp(clip, x, T16.float(), sigma=8.0)
print("official done", f"{time.time()-t0:.0f}s", flush=True)
off = {"map": omap}
print("anchor norms official", T16.float().double().norm(dim=0).tolist(), "ours", T.double().norm(dim=0).tolist())
print("anchors bitwise equal:", torch.equal(T, T16.float()))
print("feature max abs diff per stage:", [float((a - b).abs().max()) for a, b in zip(feats, ofeats)])
print("map err/range default:", t._map_error(amap.numpy(), off), "float32 anchors:", t._map_error(amap32.numpy(), off))
print("cls abs err default:", float(np.abs(cls.numpy() - ocls).max()), "float32:", float(np.abs(cls32.numpy() - ocls).max()))
print(f"total {time.time()-t0:.0f}s")
