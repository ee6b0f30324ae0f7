"The `dpg` command: listing, one-line errors with exit status 2 for bad input, and a tiny run end to end."
import json, subprocess, sys
from pathlib import Path
import pytest
from dpg_nb.cli import main

TINY = ["prompts_per_step=4", "grouping=cross", "val_small=0", "samples_per_prompt=4", "inner_batch=16", "val_prompts=16", "minibatch=16",
        "max_new_tokens=8", "gen_hidden=32", "target_hidden=24", "vocab_size=32"]

def dpg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dpg_nb.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)

def test_list():
    r = dpg("list")
    assert r.returncode == 0, r.stderr
    names = [l.split()[0] for l in r.stdout.splitlines() if l.strip() and not l.startswith(("scales", "keys"))]
    assert names == ["qr", "sixseven", "l2", "language", "uuid"]
    assert "cpu, smol, paper" in r.stdout
    r = dpg("list", "qr", "--scale", "paper")                     # every key, with the paper's defaults
    assert r.returncode == 0 and "  strength=20.0 " in r.stdout and "  error_correction=M " in r.stdout, r.stdout

def test_user_error_is_one_line_exit_2(tmp_path):
    r = dpg("run", "nope", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "unknown experiment 'nope'" in r.stderr
    assert not (tmp_path / "x").exists()

BAD = [
    (["run", "nope"], "unknown experiment 'nope'"),
    (["run", "l2", "--scale", "huge"], "unknown scale 'huge'"),
    (["run", "l2", "stepz=3"], "unknown key 'stepz'"),
    (["run", "l2", "steps=two"], "steps must be an integer"),
    (["run", "l2", "gen_lr=fast"], "gen_lr must be a number"),
    (["run", "l2", "steps=0"], "steps must be positive"),
    (["run", "l2", "prompts_per_step=-4"], "prompts_per_step must be positive"),
    (["run", "l2", "inner_batch=48"], "does not divide"),
    (["run", "l2", "text=hello"], "does not apply to experiment 'l2'"),
    (["run", "l2", "steps"], "expected key=value"),
    (["run", "l2", "--seed", "x"], "--seed must be an integer"),
    (["run", "l2", "reward=magic"], "reward must be one of"),
    (["run", "qr", "text=" + "x" * 40, *TINY], "does not fit"),
    (["run", "language", "reward=embedding"], "needs text"),
    (["run", "l2", "metric=nomodule_xyz:f"], "cannot import metric"),
    (["frobnicate"], "invalid choice"),
    (["plot", "/nonexistent/run"], "holds no run"),
    (["sample", "/nonexistent/run"], "has no trained generator"),
]

@pytest.mark.parametrize("argv,msg", BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_bad_input(argv, msg, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert msg in err, err
    assert not (tmp_path / "runs").exists()          # nothing written

def test_metric_without_dependence(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flat.py").write_text("import torch\ndef phi(params): return torch.tensor(0.5)\n")
    assert main(["run", "l2", "--out", "r", "metric=flat:phi", *TINY]) == 2
    assert "does not depend on the target's trainable parameters" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

def test_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = dpg("run", "qr", "--out", str(out), "--no-progress", "steps=2", "val_every=1", "text=hi", *TINY)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [".lock", "checkpoints", "config.json", "curves.png", "generator", "image.png", "metrics.jsonl", "qr.png"], names
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step000002"]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in rows] == [("val", 0), ("train", 1), ("val", 1), ("train", 2), ("val", 2)]
    for row in rows:
        for k in ("step", "examples_seen", "phi", "wall_s", "pixel_accuracy", "decoded_text"): assert k in row, (k, row)
    assert rows[-1]["examples_seen"] == 32
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["text"] == "hi" and cfg["config"]["steps"] == 2
    assert {"versions", "git_commit", "device", "threads"} <= set(cfg)
    # the folder is protected: a second run without --resume is refused and changes nothing
    before = (out / "metrics.jsonl").read_bytes()
    r = dpg("run", "qr", "--out", str(out), "steps=2", "text=hi", *TINY)
    assert r.returncode == 2 and "already holds a run" in r.stderr
    assert (out / "metrics.jsonl").read_bytes() == before
    # what a researcher reaches for next
    r = dpg("sample", str(out), "-n", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[0] ") and len(r.stdout.splitlines()) == 2
    r = dpg("plot", str(out), "--out", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.png").stat().st_size > 1000
