"""Exhaustive checks of the metagradient engine that are too slow for a docs page (run with `pytest -m slow`),
plus a quick end-to-end check of the public contract."""
import itertools, pytest, torch
from dpg_nb.optim import SGD, AdamW
from dpg_nb.metagrad import rewards, train
from dpg_nb.models import tiny_lm

def _lm(tie, dtype=torch.float64):
    return tiny_lm(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, tie=tie, dtype=dtype)

def _data(n, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (n, L), generator=g)
    lens = torch.randint(2, L + 1, (n,), generator=g)
    return ids, torch.arange(L)[None] < lens[:, None]

def _phi(p):
    return (-(p["lm_head.weight"][:5, :4] - 0.1).pow(2).sum() + p["model.norm.weight"].pow(3).sum()
            + p["model.layers.0.self_attn.q_proj.weight"][0, :3].sum())

def _rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()

def test_contract_quick():
    ids, mask = _data(4)
    m = _lm(True, torch.float32)
    r = rewards(m, ids, _phi, opt=AdamW(lr=1e-2), batch_size=2, loss_mask=mask)
    assert r.shape == (4,) and r.dtype == torch.float32 and torch.isfinite(r).all() and r.abs().max() > 0
    with pytest.raises(ValueError, match="multiple of batch_size"): rewards(m, ids, _phi, opt=SGD(lr=0.1), batch_size=3)

GRID = list(itertools.product(["sgd", "adamw"], [True, False], [1, 3, 8], [1, 4], [False, True]))

@pytest.mark.slow
@pytest.mark.parametrize("opt_name,tie,T,b,use_mask", GRID)
def test_replay_equals_unroll(opt_name, tie, T, b, use_mask):
    opt = SGD(0.5, weight_decay=0.1) if opt_name == "sgd" else AdamW(1e-2, weight_decay=0.1)
    ids, mask = _data(T * b, seed=10 * T + b)
    kw = dict(loss_mask=mask if use_mask else None)
    ru = rewards(_lm(tie), ids, _phi, opt, b, engine="unroll", **kw)
    rr = rewards(_lm(tie), ids, _phi, opt, b, engine="replay", **kw)
    assert torch.isfinite(ru).all() and ru.abs().max() > 0
    assert _rel(rr, ru) <= 1e-10
    if b > 1: assert _rel(rewards(_lm(tie), ids, _phi, opt, b, microbatch_size=b - 1, **kw), ru) <= 1e-10

@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_sgd_finite_differences_pure_float64(tie):
    "A plain-torch float64 model (HF Llama casts norms/softmax to float32, too noisy for difference quotients)."
    class Pure(torch.nn.Module):
        def __init__(self, V=16, d=8):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            rn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
            self.emb, self.w1 = torch.nn.Parameter(rn(V, d) * .5), torch.nn.Parameter(rn(d, d) / d**.5)
            self.head = self.emb if tie else torch.nn.Parameter(rn(V, d) * .5)
        def forward(self, x):
            h = self.emb[x]
            h = h + torch.tanh(h @ self.w1).cumsum(1) / torch.arange(1, x.shape[1] + 1)[:, None]   # causal mixing
            return h @ self.head.T
    phi = lambda p: -(p["head"][:5, :4] - 0.1).pow(2).sum() + p["w1"][0].sum()
    ids, mask = _data(8, seed=3)
    m, opt = Pure(), SGD(0.3, weight_decay=0.05)
    r = rewards(m, ids, phi, opt, 2, loss_mask=mask)
    h, E = 1e-5, torch.eye(8, dtype=torch.float64)
    Phi = lambda w: phi(train(m, ids, opt, 2, loss_mask=mask, weights=w)).item()
    fd = torch.tensor([(Phi(1 + h * E[i]) - Phi(1 - h * E[i])) / (2 * h) for i in range(8)], dtype=torch.float64)
    assert _rel(fd, r) <= 1e-6

@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("mb", [1, 2, 3])
def test_microbatches_equal_one_batch(opt_name, mb):
    "Replay with `microbatch_size` gives the unbatched rewards: row and token rewards, a kept last step, a scaled sum."
    opt = SGD(0.5, weight_decay=0.1) if opt_name == "sgd" else AdamW(1e-2, weight_decay=0.1)
    ids, mask = _data(11, seed=5)
    for tie, kw in ((True, {}), (False, dict(per_token=True)), (True, dict(last_batch="keep", loss_scale=0.2))):
        n = 11 if "last_batch" in kw else 8
        one = rewards(_lm(tie), ids[:n], _phi, opt, 4, loss_mask=mask[:n], **kw)
        assert torch.isfinite(one).all() and one.abs().max() > 0
        assert _rel(rewards(_lm(tie), ids[:n], _phi, opt, 4, loss_mask=mask[:n], microbatch_size=mb, **kw), one) <= 1e-10

@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
@pytest.mark.parametrize("segment", [2, 3, 5])
def test_segments_change_no_bit(opt_name, segment):
    "States trained again a segment at a time are the same tensors: the rewards equal replay's with every state kept, bit for bit."
    opt = SGD(0.5, weight_decay=0.1) if opt_name == "sgd" else AdamW(1e-2, weight_decay=0.1)
    ids, mask = _data(14, seed=segment)
    for tie, kw in ((True, {}), (False, dict(keep_mb=0, graph_mb=0, microbatch_size=1)), (True, dict(last_batch="keep", per_token=True))):
        b = 3 if "last_batch" in kw else 2                      # 7 steps, or 5 with a last step of 2 rows
        every = rewards(_lm(tie), ids, _phi, opt, b, loss_mask=mask, **kw)
        assert torch.isfinite(every).all() and every.abs().max() > 0
        assert torch.equal(rewards(_lm(tie), ids, _phi, opt, b, loss_mask=mask, segment=segment, **kw), every)
    assert _rel(every, rewards(_lm(True), ids, _phi, opt, 3, loss_mask=mask, engine="unroll", last_batch="keep", per_token=True)) <= 1e-10
