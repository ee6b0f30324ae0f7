"""Run folders that never lose or mix data: one run at a time per folder, never into a folder holding other files,
checked metrics and checkpoints on resume, divergence as a named user error, and `dpg` telling user errors from bugs.
Tiny cpu runs (1-4 steps, one thread)."""
import hashlib, json, os, shutil, socket, subprocess, sys
from pathlib import Path
import pytest, torch
import dpg_nb.loop as L
from dpg_nb import runfolder as RF
from dpg_nb.cli import main

TINY = ["prompts_per_step=4", "grouping=cross", "val_small=0", "samples_per_prompt=4", "inner_batch=16", "val_prompts=16", "minibatch=16",
        "max_new_tokens=8", "gen_hidden=32", "target_hidden=24", "vocab_size=32", "val_every=1", "ckpt_every=1", "threads=1"]

def dpg(*args, capsys=None):
    "`dpg ARGS` in this process: (status, stderr)."
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err if capsys else ""

def run_l2(out, steps, *extra, capsys=None): return dpg("run", "l2", "--out", out, "--no-progress", *TINY, f"steps={steps}", *extra, capsys=capsys)

def rows(out): return L.strip_timing(L.read_metrics(out))

def digest(d:Path)->dict: return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "A 2-step run (a checkpoint after each step) and an uninterrupted 3-step one, of the same config."
    d = tmp_path_factory.mktemp("runs")
    assert run_l2(d / "two", 2)[0] == 0 and run_l2(d / "three", 3)[0] == 0
    return d

@pytest.fixture
def two(runs, tmp_path):
    "A fresh copy of the 2-step run to damage."
    shutil.copytree(runs / "two", tmp_path / "two")
    return tmp_path / "two"

# ---------------------------------------------------------------- one run at a time; never into a folder with other files

def test_lock_names_the_holder(tmp_path, capsys):
    out = tmp_path / "r"
    with RF.RunLock(out):                                  # another run holds the folder
        rc, err = run_l2(out, 1, capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"is in use by another run (pid {os.getpid()} on {socket.gethostname()}, started " in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]        # it wrote nothing
    assert run_l2(out, 1)[0] == 0                          # once released, the folder takes a run

def test_two_runs_at_once_never_mix(runs, tmp_path):
    "Two `dpg run` of different seeds started together into one folder: one runs, the other is refused; no row of the loser."
    out = tmp_path / "r"
    cmd = lambda seed: [sys.executable, "-m", "dpg_nb.cli", "run", "l2", "--out", str(out), "--no-progress", "--seed", str(seed), *TINY, "steps=2"]
    ps = [subprocess.Popen(cmd(s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in (0, 1)]
    res = [(p.wait(timeout=300), p.stderr.read()) for p in ps]
    assert sorted(rc for rc, _ in res) == [0, 2], res
    won, (_, err) = [rc for rc, _ in res].index(0), next(r for r in res if r[0] == 2)
    assert "is in use by another run (pid" in err or "already holds a run" in err, err
    assert L.resume_config(out).seed == won
    if won == 0: assert rows(out) == rows(runs / "two")   # the winner's rows, whole and alone
    else: assert {r["examples_seen"] for r in rows(out)} == {0, 16, 32} and len(rows(out)) == 5

def test_never_clobber_user_files(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "generator").mkdir(parents=True)
    for f in ("notes.txt", "curves.png", "generator/model.safetensors"): (out / f).write_text(f)
    before = digest(out)
    for extra in ((), ("--resume",)):
        rc, err = run_l2(out, 1, *extra, capsys=capsys)
        assert rc == 2 and "is not empty (it holds curves.png, generator, notes.txt): a new run needs an empty or new folder" in err, err
    assert digest(out) == before and not (out / ".lock").exists()

# ---------------------------------------------------------------- metrics.jsonl on resume

def test_rows_after_checkpoint_dropped_by_rewrite(runs, two, capsys):
    m = two / "metrics.jsonl"
    inode = m.stat().st_ino
    shutil.rmtree(two / "checkpoints" / "step000002")       # resume from step 1: rows of step 2 follow its checkpoint
    with open(m, "a") as f: f.write('{"split": "train", "step": 3, "exa')     # and half a row
    assert run_l2(two, 3, "--resume", capsys=capsys)[0] == 0
    assert rows(two) == rows(runs / "three") and b"\0" not in m.read_bytes() and m.read_bytes().count(b"\n") == 7
    assert m.stat().st_ino != inode                          # a new file renamed into place, not the old one truncated

def test_metrics_cut_short_is_refused(two, capsys):
    m = two / "metrics.jsonl"
    m.write_bytes(m.read_bytes()[:-60])                     # the last rows lost
    before = m.read_bytes()
    rc, err = run_l2(two, 3, "--resume", capsys=capsys)
    assert rc == 2 and f"{m} is shorter ({len(before)} bytes) than checkpoint step 2 expects" in err, err
    assert m.read_bytes() == before                          # not grown (no NUL bytes), not changed

def test_metrics_missing_is_refused(two, capsys):
    (two / "metrics.jsonl").unlink()
    rc, err = run_l2(two, 3, "--resume", capsys=capsys)
    assert rc == 2 and f"{two / 'metrics.jsonl'} is missing, but checkpoint step 2 covers" in err, err
    assert not (two / "metrics.jsonl").exists()

def test_metrics_bad_line_is_named(two, capsys):
    m = two / "metrics.jsonl"
    lines = m.read_bytes().split(b"\n"); lines[2] = b"x" * len(lines[2]); m.write_bytes(b"\n".join(lines))
    rc, err = run_l2(two, 3, "--resume", capsys=capsys)
    assert rc == 2 and f"{m}, line 3 is not a JSON row" in err, err
    rc, err = dpg("plot", two, "--out", two.parent / "p.png", capsys=capsys)
    assert rc == 2 and f"{m}, line 3 is not a JSON row" in err, err

# ---------------------------------------------------------------- checkpoints and config.json

def test_damaged_checkpoint_falls_back(runs, two, capsys):
    g = two / "checkpoints" / "step000002" / "generator.safetensors"
    b = bytearray(g.read_bytes()); b[-5] ^= 0x10; g.write_bytes(b)      # one flipped bit
    rc, err = run_l2(two, 3, "--resume", capsys=capsys)
    assert rc == 0, err
    warn = [l for l in err.splitlines() if "damaged" in l]
    assert len(warn) == 1 and "step000002 (generator.safetensors does not match its sha256); using" in warn[0] and "(step 1)" in warn[0], err
    assert rows(two) == rows(runs / "three")                 # resumed from step 1, bit-exact
    assert L.generator_state(two).keys() == L.generator_state(runs / "three").keys()
    for k, v in L.generator_state(runs / "three").items(): assert torch.equal(L.generator_state(two)[k], v), k
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step000002", "step000003"]

def test_no_intact_checkpoint_is_refused(two, capsys):
    (two / "checkpoints" / "step000002" / "state.pt").write_bytes(b"\x80\x04garbage")
    (two / "checkpoints" / "step000001" / "manifest.json").unlink()
    before = digest(two)
    rc, err = run_l2(two, 3, "--resume", capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert f"no intact checkpoint in {two}" in err and "state.pt does not match its sha256" in err and "no manifest.json" in err, err
    with pytest.raises(L.UserError, match="no intact checkpoint"): L.Run.open(two)
    assert {k: v for k, v in digest(two).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}

def test_broken_config_is_a_user_error(two, capsys):
    (two / "config.json").write_text('{"config": {"experiment": "l2", "st')
    for argv in (("run", "l2", "--out", two, "--resume", "steps=3"), ("sample", two), ("plot", two, "--out", two.parent / "p.png")):
        rc, err = dpg(*argv, capsys=capsys)
        assert rc == 2 and f"{two / 'config.json'} is damaged: not valid JSON" in err and len(err.strip().splitlines()) == 1, (argv, err)

# ---------------------------------------------------------------- divergence

def test_divergence_names_the_key(tmp_path, capsys):
    out = tmp_path / "d"
    rc, err = dpg("run", "l2", "--out", out, "--no-progress", "inner_lr=1e4", "steps=1", capsys=capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "diverged at train step 1: Φ of the trained target is not finite; lower inner_lr (now 10000)" in err, err
    assert [(r["split"], r["step"]) for r in L.read_metrics(out)] == [("val", 0), ("val_small", 0)]   # nothing of step 1

@pytest.mark.parametrize("how,key", [("phi", "inner_lr"), ("weights", "gen_lr")])
def test_divergence_leaves_the_checkpoint(runs, two, capsys, monkeypatch, how, key):
    before = digest(two)
    step = L.Run.train_step
    def bad(self, s, seen):
        row = step(self, s, seen)
        if s == 3 and how == "phi": row["phi"] = None
        if s == 3 and how == "weights":
            with torch.no_grad(): next(iter(L._trainable(self.gen).values()))[0] = float("nan")
        return row
    monkeypatch.setattr(L.Run, "train_step", bad)
    rc, err = run_l2(two, 4, "--resume", capsys=capsys)
    assert rc == 2 and f"diverged at train step 3" in err and f"lower {key}" in err and "its last checkpoint (step 2) is intact" in err, err
    after = digest(two)
    assert after.pop("config.json") and before.pop("config.json")       # rewritten on resume (steps=4), nothing else
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    monkeypatch.undo()
    assert run_l2(two, 3, "--resume", capsys=capsys)[0] == 0 and rows(two) == rows(runs / "three")

def test_nan_reward_rows_leave_the_update(tmp_path, monkeypatch):
    "Rows whose reward is NaN are not passed to the PPO update: its token mean counts only rows with a reward."
    import dpg_nb.policy as P
    cfg = L.resolve("l2", "cpu", 0, dict(kv.split("=") for kv in TINY))
    R = L.Run(cfg, tmp_path, False)
    sr, seen = L.step_rewards, {}
    def nan3(*a, **k):
        res = sr(*a, **k); res["rewards"][[0, 5, 9]] = float("nan"); return res
    def spy(model, opt, ro, adv, **k):
        seen.update(n=len(ro), tokens=int(ro.response_mask.sum()), groups=ro.group.tolist()); return dict(loss=0.0)
    monkeypatch.setattr(L, "step_rewards", nan3); monkeypatch.setattr(P, "policy_step", spy)
    L._seed_everything(0)
    ro = R.rollouts(*R.prompts.train(1), cfg.samples_per_prompt, L._mix(cfg.seed, L.TAG_SAMPLE, 1))[0]
    L._seed_everything(0)
    R.train_step(1, 16)
    keep = [i for i in range(16) if i not in (0, 5, 9)]
    assert seen == dict(n=13, tokens=int(ro.response_mask[keep].sum()), groups=ro.group[keep].tolist())

# ---------------------------------------------------------------- user errors and bugs

def test_bug_is_a_traceback_exit_1(monkeypatch, capsys):
    import dpg_nb.cli as C
    monkeypatch.setattr(C, "cmd_list", lambda a: {}["missing"])
    rc, err = dpg("list", capsys=capsys)
    assert rc == 1 and "Traceback" in err and "KeyError: 'missing'" in err, err
    monkeypatch.setattr(C, "cmd_list", lambda a: int("x"))          # a ValueError is a bug too, unless it is a UserError
    rc, err = dpg("list", capsys=capsys)
    assert rc == 1 and "ValueError: invalid literal" in err, err

def test_debug_shows_a_user_errors_traceback(capsys):
    rc, err = dpg("run", "nope", capsys=capsys)
    assert rc == 2 and err.strip().startswith("error: unknown experiment 'nope'; choose one of: qr, ") and len(err.strip().splitlines()) == 1, err
    rc, err = dpg("--debug", "run", "nope", capsys=capsys)
    assert rc == 2 and "Traceback" in err and "UserError" in err and err.strip().splitlines()[-1].startswith("error: unknown experiment"), err

KERNEL = [(("run", "l2", "generator=/nonexistent/gen"), "generator='/nonexistent/gen': could not load a causal LM"),
          (("run", "qr", "patch_col0=60"), "experiment 'qr': a 21x21 patch from token 60 needs vocab >= 81"),
          (("plot", "RUN", "--out", "/nonexistent/dir/p.png"), "cannot write /nonexistent/dir/p.png: no folder /nonexistent/dir"),
          (("sample", "RUN", "--max-new-tokens", "-1"), "max_new_tokens must be a positive integer, got -1")]

@pytest.mark.parametrize("argv,msg", KERNEL, ids=[a[0] + " " + a[-1][:20] for a, _ in KERNEL])
def test_kernel_refusals_are_user_errors(argv, msg, runs, tmp_path, capsys, monkeypatch):
    "What a kernel refuses with a ValueError or OSError on the user's input reaches `dpg` as a UserError: one line, status 2."
    monkeypatch.chdir(tmp_path)
    rc, err = dpg(*[str(runs / "two") if a == "RUN" else a for a in argv], capsys=capsys)
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and msg in err, err
    assert not (tmp_path / "runs").exists()

def test_prompts_file_not_found(tmp_path, capsys, monkeypatch):
    from dpg_nb.data import tiny_tokenizer
    from dpg_nb.models import tiny_lm
    monkeypatch.chdir(tmp_path)
    tt = tiny_tokenizer(320); tiny_lm(len(tt), 32, 2).save_pretrained(tmp_path / "g"); tt.save_pretrained(tmp_path / "g")
    rc, err = dpg("run", "l2", "--out", "o", "generator=g", "prompts=missing.txt", *TINY[:-3], capsys=capsys)
    assert rc == 2 and "error: prompts='missing.txt': load_texts: no such file 'missing.txt'" in err, err
    assert not (tmp_path / "o").exists()

def test_earlier_checkpoint_pt_still_reads(runs, two, capsys):
    "A run folder of an earlier version (one `checkpoint.pt`) opens, and resumes exactly."
    ck = RF.read_checkpoint(two)
    torch.save({k: ck[k] for k in ("step", "examples_seen", "metrics_bytes", "gen", "gen_opt", "rng", "extra")}, two / "checkpoint.pt")
    shutil.rmtree(two / "checkpoints")
    R, step = L.Run.open(two)
    assert step == 2 and all(torch.equal(p, ck["gen"][k]) for k, p in L._trainable(R.gen).items())
    assert run_l2(two, 3, "--resume", capsys=capsys)[0] == 0 and rows(two) == rows(runs / "three")
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["step000003"]
