"""The loop on two gloo ranks (CPU): `dpg run l2 --nproc 2` gives the one-process rows; a 2-rank run resumed from
its checkpoint ends as an uninterrupted 2-rank run; rank 1 never touches the run folder. And the memory knobs of the
paper's scale, sampling and the policy update in microbatches and the rewards' replay a segment at a time, give the
one-process rows too.

Three runs of a tiny l2 config: one process (here), two ranks through the command line (torchrun), and two ranks
started once for the file (`torch.multiprocessing.spawn`) that run 2 steps, then resume to 4, rank 1 under an audit
hook that records every file operation Python makes on a path inside the run folders."""
import datetime, json, math, os, subprocess, sys
from pathlib import Path
import pytest, torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dpg_nb import loop as L
from dpg_nb import distributed as D

W = 2
TINY = dict(steps="4", val_every="2", ckpt_every="2", prompts_per_step="4", grouping="cross", val_small="0", samples_per_prompt="4",
            inner_batch="8", val_prompts="8", minibatch="8", max_new_tokens="8", gen_hidden="32", target_hidden="24", vocab_size="32",
            threads="1")

def cfg(**kw): return L.resolve("l2", "cpu", 0, {**TINY, **kw})

def _worker(rank, init, root):
    torch.set_num_threads(1)
    root, touched = Path(root), []
    if rank:                                    # every file operation of rank 1 on a path inside the run folders
        runs = str(root / "runs") + os.sep
        def inside(a):
            if not isinstance(a, (str, bytes, os.PathLike)): return False
            try: return os.path.abspath(os.fsdecode(a)).startswith(runs)
            except (TypeError, ValueError): return False
        sys.addaudithook(lambda ev, args: touched.append((ev, [str(a) for a in args if inside(a)])) if any(inside(a) for a in args) else None)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=W, timeout=datetime.timedelta(seconds=300))
    steps, gen = L._run_steps, {}
    def spy(cfg, out, resume, progress, R):                            # the generator each rank ends with
        rows = steps(cfg, out, resume, progress, R)
        gen.update({k: v.detach().clone() for k, v in L.RF.trainable(R.gen).items()})
        return rows
    L._run_steps = spy
    try:
        out = root / "runs" / "cut"
        first = D.run(cfg(steps="2"), out, progress=False)           # 2 steps, a checkpoint at step 2
        rows = D.run(cfg(), out, resume=True, progress=False)       # resumed, on to step 4
        try: D.run(cfg(), out, progress=False); refused = None           # the folder holds a run: rank 0 refuses, for both
        except L.UserError as e: refused = str(e)
        n = len(touched)
        (out / "config.json").read_text()                             # the hook sees a read (rank 1 only, after the runs)
        torch.save(dict(first=first, rows=rows, gen=gen, refused=refused, touched=touched[:n], probe=touched[n:]), root / f"rank{rank}.pt")
    finally: dist.destroy_process_group()

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("dploop")
    (r / "runs").mkdir()
    return r

CLI = ["run", "l2", "--nproc", "2", "--no-progress", *[f"{k}={v}" for k, v in TINY.items()]]

@pytest.fixture(scope="module")
def runs(root):
    "The three runs at once (starting a process is most of their time): `dpg run … --nproc 2`, the spawned pair, one process here."
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    cli = subprocess.Popen([sys.executable, "-m", "dpg_nb.cli", *CLI, "--out", str(root / "runs" / "cli")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pair = mp.spawn(_worker, args=(f"file://{root / 'rendezvous'}", str(root)), nprocs=W, join=False)
        one = L.run(cfg(), root / "runs" / "one", progress=False)
        while not pair.join(timeout=600): pass
        stdout, stderr = cli.communicate(timeout=600)
    finally:
        if cli.poll() is None: cli.kill()
        if old is None: os.environ.pop("OMP_NUM_THREADS")
        else: os.environ["OMP_NUM_THREADS"] = old
    return dict(one=one, cli=(cli.returncode, stdout, stderr), spawned=[torch.load(root / f"rank{k}.pt", weights_only=False) for k in range(W)])

@pytest.fixture(scope="module")
def one(runs): return runs["one"]

@pytest.fixture(scope="module")
def spawned(runs): return runs["spawned"]

@pytest.fixture(scope="module")
def cli(root, runs):
    "The rows of `dpg run l2 --nproc 2`."
    rc, stdout, stderr = runs["cli"]
    assert rc == 0, stdout + stderr
    assert f"{root / 'runs' / 'cli'}: 4 steps, 64 examples seen" in stdout, stdout
    return L.read_metrics(root / "runs" / "cli")

def _close(a, b, rel=1e-4, floor=1e-6)->list:
    "The fields of rows `a`, `b` that differ by more than `rel` relative (`floor` absolute for round-off-sized values)."
    bad = []
    for x, y in zip(L.strip_timing(a), L.strip_timing(b)):
        assert x.keys() == y.keys(), (x.keys() ^ y.keys())
        for k in x:
            u, v = x[k], y[k]
            if isinstance(u, float) or isinstance(v, float):
                if u is None or v is None or abs(u - v) > rel * max(abs(u), abs(v)) + floor: bad.append((x["split"], x["step"], k, u, v))
            elif u != v: bad.append((x["split"], x["step"], k, u, v))
    return bad

def test_two_ranks_equal_one_process(one, cli):
    assert [(r["split"], r["step"]) for r in cli] == [(r["split"], r["step"]) for r in one]
    assert len(one) == 7 and one[-1]["examples_seen"] == 64
    assert _close(cli, one) == []
    worst = max(abs(x[k] - y[k]) / abs(y[k]) for x, y in zip(cli, one) for k in ("phi", "reward_mean", "grad_norm") if k in x)
    print(f"2 ranks vs 1 process: largest relative difference of phi, reward_mean, grad_norm {worst:.1e}")
    assert any(r["split"] == "train" and r["reward_std"] > 0 and r["grad_norm"] > 0 for r in one)   # something was learned from

def test_the_folder_is_one_process_folder(root, one, cli):
    names = lambda d: sorted(p.name for p in d.iterdir())
    assert names(root / "runs" / "cli") == names(root / "runs" / "one")
    assert names(root / "runs" / "cli" / "checkpoints") == ["step000002", "step000004"]
    a, b = L.generator_state(root / "runs" / "cli"), L.generator_state(root / "runs" / "one")
    assert a.keys() == b.keys()
    rel = {k: float((a[k] - b[k]).norm() / b[k].norm()) for k in a}    # AdamW's m/√v magnifies round-off in coordinates near 0
    print(f"generator weights, 2 ranks vs 1 process: largest relative difference of a tensor {max(rel.values()):.1e}")
    assert max(rel.values()) <= 1e-4, rel

def test_resume_on_two_ranks_equals_uninterrupted(root, spawned, cli):
    r0, r1 = spawned
    assert r0["rows"] == r1["rows"]                                    # every rank returns the run's rows
    assert r0["gen"].keys() == r1["gen"].keys() and len(r0["gen"]) > 0
    for k in r0["gen"]: assert torch.equal(r0["gen"][k], r1["gen"][k]), k   # and holds the same generator, bit for bit
    assert [(r["split"], r["step"]) for r in r0["first"]] == [("val", 0), ("train", 1), ("train", 2), ("val", 2)]
    assert L.strip_timing(r0["rows"]) == L.strip_timing(cli)           # resumed == uninterrupted, both on 2 ranks
    a, b = L.generator_state(root / "runs" / "cut"), L.generator_state(root / "runs" / "cli")
    for k in a: assert torch.equal(a[k], b[k]), k

def test_only_rank_0_touches_the_folder(root, spawned):
    assert (root / "runs" / "cut" / "metrics.jsonl").exists()          # rank 0 wrote it
    assert spawned[1]["probe"], "the audit hook does not see a file read"
    assert spawned[1]["touched"] == [], spawned[1]["touched"][:5]

def test_a_refusal_reaches_every_rank(spawned):
    for r in spawned: assert r["refused"] is not None and "already holds a run" in r["refused"], r["refused"]

def test_microbatches_equal_the_whole(root, one):
    "One process sampling a prompt at a time (`sample_microbatch`) and updating the policy 3 rows a pass (`policy_microbatch`): the plain run's rows, round-off apart."
    mb = L.run(cfg(sample_microbatch="4", policy_microbatch="3"), root / "runs" / "mb", progress=False)
    assert [(r["split"], r["step"]) for r in mb] == [(r["split"], r["step"]) for r in one]
    assert _close(mb, one) == []

def test_segments_equal_the_whole(root, one):
    "The rewards' replay keeping one state of each 2-step inner run and training the other again (`inner_segment`): the plain run's rows, bit for bit."
    import dpg_nb.metagrad as M
    again, sft = [], M._sft
    def spy(*a, start=None, **k):                                      # the segments trained again
        if start is not None: again.append(start[0])
        return sft(*a, start=start, **k)
    M._sft = spy
    try: seg = L.run(cfg(inner_segment="2"), root / "runs" / "seg", progress=False)
    finally: M._sft = sft
    assert again and set(again) == {0}
    assert L.strip_timing(seg) == L.strip_timing(one)
