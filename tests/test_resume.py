"""Exact resume: a `dpg run` killed with SIGKILL after its first checkpoint, then resumed, ends with the same
`metrics.jsonl` (timing fields aside) and the same generator weights as an uninterrupted run."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
from dpg_nb.runfolder import strip_timing, generator_state

ARGS = ["run", "l2", "--no-progress", "steps=8", "ckpt_every=2", "val_every=3", "prompts_per_step=4", "val_small=0",
        "samples_per_prompt=4", "inner_batch=16", "val_prompts=16", "minibatch=16", "max_new_tokens=12",
        "gen_hidden=32", "target_hidden=24", "vocab_size=32"]

def cmd(out, *extra): return [sys.executable, "-m", "dpg_nb.cli", *ARGS, "--out", str(out), *extra]

def rows(out): return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]

def test_kill_and_resume(tmp_path):
    full = tmp_path / "full"
    r = subprocess.run(cmd(full), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr

    cut = tmp_path / "cut"
    p = subprocess.Popen(cmd(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not any((cut / "checkpoints").glob("step*")):   # the first checkpoint, renamed into place whole
        assert p.poll() is None, "the run ended before its first checkpoint"
        assert time.time() - t0 < 240
        time.sleep(0.01)
    n = len((cut / "metrics.jsonl").read_text().splitlines())
    while len((cut / "metrics.jsonl").read_text().splitlines()) == n and p.poll() is None: time.sleep(0.005)
    time.sleep(0.05)                                  # now inside a later step, after some of its rows
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL); p.wait()
    killed_rows = len((cut / "metrics.jsonl").read_text().splitlines())
    assert not (cut / "generator").exists()            # it really died mid-run
    assert 0 < killed_rows < len(rows(full))

    r = subprocess.run(cmd(cut, "--resume"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert strip_timing(rows(cut)) == strip_timing(rows(full))
    a, b = generator_state(full), generator_state(cut)
    assert a.keys() == b.keys()
    for k in a: assert (a[k] == b[k]).all(), k
