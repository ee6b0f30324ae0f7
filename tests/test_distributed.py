"""Data-parallel metagradients: `rewards` and `train` on two gloo ranks (CPU) equal the one-process results.

The two ranks are started once for the whole file (`torch.multiprocessing.spawn`); each runs every case under
the default process group and saves what it got; the tests compare that with the same call in this process,
where torch.distributed is not initialized."""
import datetime, os, pytest, torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dpg_nb.optim import SGD, AdamW
from dpg_nb.metagrad import rewards, train
from dpg_nb.models import tiny_lm

W = 2   # ranks

def _lm(tie):
    return tiny_lm(vocab_size=16, hidden_size=8, n_layers=1, n_heads=2, tie=tie, dtype=torch.float64)

def _data(n, L=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 16, (n, L), generator=g)
    lens = torch.randint(2, L + 1, (n,), generator=g)                # right padding: row i has lens[i] real tokens
    return ids, torch.arange(L)[None] < lens[:, None]

def _phi(p):
    return (-(p["lm_head.weight"][:5, :4] - 0.1).pow(2).sum() + p["model.norm.weight"].pow(3).sum()
            + p["model.layers.0.self_attn.q_proj.weight"][0, :3].sum())

def _rel(a, b): return ((a - b).abs().max() / b.abs().max()).item()

_sgd, _adamw = lambda: SGD(0.5, weight_decay=0.1), lambda: AdamW(1e-2, weight_decay=0.1)
CASES = {   # name: (tied head, optimizer, n rows, b rows a step, keyword arguments of `rewards`)
    "sgd_tied": (True, _sgd, 12, 4, {}),
    "sgd_untied": (False, _sgd, 12, 4, {}),
    "adamw_tied": (True, _adamw, 12, 4, {}),
    "adamw_untied": (False, _adamw, 12, 4, {}),
    "per_token": (True, _adamw, 12, 4, dict(per_token=True)),
    "microbatch_1": (False, _adamw, 12, 4, dict(microbatch_size=1)),
    "microbatch_3": (True, _sgd, 12, 4, dict(microbatch_size=3)),     # shares of 2 rows: one microbatch each
    "uneven_b3": (True, _adamw, 9, 3, {}),                            # shares of 2 and 1 rows
    "b1": (False, _sgd, 3, 1, {}),                                    # the second rank never has a row
    "keep_last": (False, _adamw, 7, 3, dict(last_batch="keep")),      # steps of 3, 3, 1 rows
    "loss_scale": (True, _adamw, 8, 4, dict(loss_scale=2 / 6)),
    "all_options": (True, _adamw, 7, 3, dict(last_batch="keep", microbatch_size=1, per_token=True, loss_scale=0.5)),
    "segment": (False, _adamw, 21, 3, dict(segment=3, keep_mb=0, microbatch_size=1)),   # 7 steps: states 0, 3, 6 kept, the rest trained again
    "unroll": (False, _adamw, 9, 3, dict(engine="unroll")),           # the oracle runs whole on every rank
}

def _rewards(name, **kw):
    tie, opt, n, b, extra = CASES[name]
    ids, mask = _data(n, seed=n + b)
    return rewards(_lm(tie), ids, _phi, opt(), b, loss_mask=mask, **extra, **kw)

TRAIN = {   # name: keyword arguments of `train` on 7 rows, b = 3, untied head, AdamW
    "train": dict(),
    "train_options": dict(weights=torch.linspace(0.5, 1.5, 7), microbatch_size=1, loss_scale=0.25),
}

def _train(name, **kw):
    ids, mask = _data(7, seed=1)
    return train(_lm(False), ids, _adamw(), 3, mask, last_batch="keep", **TRAIN[name], **kw)

def _worker(rank, init, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=W, timeout=datetime.timedelta(seconds=120))
    try:
        res = {name: _rewards(name) for name in CASES}                # the default group
        res["group=None"] = _rewards("adamw_tied", group=None)        # this rank alone, inside the group
        res["explicit_group"] = _rewards("sgd_untied", group=dist.new_group(list(range(W))))
        res.update({name: _train(name) for name in TRAIN})
        try: _rewards("adamw_tied", microbatch_size=rank + 1)           # ranks that disagree are refused
        except ValueError as e: res["mismatch"] = str(e)
        try: _rewards("adamw_tied", segment=rank + 1)                  # one would train segments again, the other wait for it
        except ValueError as e: res["segment mismatch"] = str(e)
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally: dist.destroy_process_group()

@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    "What each of the W ranks returned, case by case."
    d = tmp_path_factory.mktemp("dp")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try: mp.spawn(_worker, args=(f"file://{d / 'rendezvous'}", str(d)), nprocs=W, join=True)
    finally:
        if old is None: os.environ.pop("OMP_NUM_THREADS")
        else: os.environ["OMP_NUM_THREADS"] = old
    return [torch.load(d / f"rank{k}.pt") for k in range(W)]

@pytest.mark.parametrize("name", list(CASES))
def test_rewards_on_two_ranks_equal_one_process(ranks, name):
    one = _rewards(name)                                              # no process group here: one process
    assert torch.isfinite(one).all() and one.abs().max() > 0
    assert ranks[0][name].shape == one.shape and ranks[0][name].dtype == one.dtype
    assert torch.equal(ranks[0][name], ranks[1][name])                # every rank returns the whole, same vector
    print(f"{name}: rel {_rel(ranks[0][name], one):.1e}")
    assert _rel(ranks[0][name], one) <= 1e-10

def test_group_none_is_one_process(ranks):
    one = _rewards("adamw_tied")
    for k in range(W): assert _rel(ranks[k]["group=None"], one) <= 1e-10
    print(f"group=None: rel {max(_rel(r['group=None'], one) for r in ranks):.1e}")

def test_explicit_group(ranks):
    one = _rewards("sgd_untied")
    assert torch.equal(ranks[0]["explicit_group"], ranks[1]["explicit_group"])
    assert _rel(ranks[0]["explicit_group"], one) <= 1e-10

@pytest.mark.parametrize("name", list(TRAIN))
def test_train_on_two_ranks_equals_one_process(ranks, name):
    one = _train(name)
    assert set(ranks[0][name]) == set(one)
    for k, v in one.items():
        assert torch.equal(ranks[0][name][k], ranks[1][name][k])          # replicated weights
        assert _rel(ranks[0][name][k], v) <= 1e-10, k
    print(f"{name}: rel {max(_rel(ranks[0][name][k], v) for k, v in one.items()):.1e}")

def test_ranks_with_different_arguments_are_refused(ranks):
    for r in ranks: assert "different data or arguments" in r["mismatch"] and "different data or arguments" in r["segment mismatch"]
