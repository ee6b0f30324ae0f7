"The language and UUID experiments: metrics on a tiny target, baselines as rewards, CLI errors, a smol run (slow)."
import json, subprocess, sys
import pytest, torch
from dpg_nb.data import tiny_tokenizer
from dpg_nb.models import tiny_lm
from dpg_nb.language import (UUID, LanguageMetric, UUIDMetric, encode_eval, lang_texts, lang_prob, lang_share,
                             uuid_prefix_len)
from dpg_nb.config import resolve, make_metric, UserError
from dpg_nb.step import step_rewards
from dpg_nb.metagrad import rewards, train
from dpg_nb.optim import AdamW, SGD

@pytest.fixture(scope="module")
def tok(): return tiny_tokenizer(320)

def dpg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dpg_nb.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)

def test_offline_text_every_language():
    for l in ("es", "fr", "de", "it"):
        t = lang_texts(l)
        assert len(t) >= 60 and lang_share(t[:20], l) >= 0.6, l

def test_lastword_mask_scores_only_the_last_word(tok):
    X, M = encode_eval(["la casa es muy grande"], tok)
    assert tok.decode(X[0][M[0]].tolist()).strip() == "grande"

def test_uuid_metric_rises_when_trained_on_the_uuid(tok):
    t = tiny_lm(len(tok), 16, 1, seed=0)
    m = UUIDMetric(t, tok)
    X, M = encode_eval([UUID] * 4, tok, "whole")
    P0 = dict(t.named_parameters(remove_duplicate=False))
    assert m(train(t, X, AdamW(lr=1e-2), 4, M)) > m(P0) + 0.05
    assert m.readable_texts(["x " + UUID[:10]]) == dict(uuid_hit_rate=0.0, uuid_prefix_len=10)
    assert uuid_prefix_len(UUID) == len(UUID)

def test_dpg_rewards_replay_equal_unroll(tok):
    t = tiny_lm(len(tok), 16, 1, seed=2, dtype=torch.float64)
    m = LanguageMetric(t, tok, "de", n_eval=4)
    X, M = encode_eval(lang_texts("de")[:4] + ["one two three four", "the sun is warm", "we read a book", "it is late"], tok, "whole")
    a = rewards(t, X, m, opt=SGD(lr=0.3), batch_size=4, loss_mask=M, engine="replay")
    b = rewards(t, X, m, opt=SGD(lr=0.3), batch_size=4, loss_mask=M, engine="unroll")
    assert torch.allclose(a, b, atol=1e-10) and a.abs().max() > 0

def test_langid_baseline_is_the_langid_probability(tok):
    t = tiny_lm(len(tok), 16, 1, seed=1)
    m = make_metric(resolve("language", "smol"), t, tok)
    texts = lang_texts("es")[10:14] + ["The dog sleeps under the old table.", "Water boils at one hundred degrees.",
                                       "Please close the door when you leave.", "Trains run late in winter."]
    X, M = encode_eval(texts, tok, "whole")
    c = resolve("language", "smol", overrides=dict(reward="langid", prompts_per_step=2, samples_per_prompt=4, inner_batch=4))
    r = step_rewards(c, t, m, X, M, texts=texts)["rewards"]
    assert torch.allclose(r, torch.tensor([lang_prob(s, "es") for s in texts], dtype=torch.float64))
    assert r[:4].min() > r[4:].max()

@pytest.mark.parametrize("args,msg", [
    (["run", "language", "reward=embedding"], "reward=embedding needs text"),
    (["run", "language", "--scale", "smol", "lang=xx"], "lang must be one of"),
    (["run", "uuid", "--scale", "smol", "reward=langid"], "baseline of the language experiment"),
    (["run", "uuid", "--scale", "smol", "lang=es"], "does not apply"),
])
def test_cli_errors(tmp_path, args, msg):
    r = dpg(*args, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()

@pytest.mark.slow
def test_smol_uuid_one_step(tmp_path):
    "One real generator step at smol scale (SmolLM2 on CPU: minutes)."
    r = dpg("run", "uuid", "--scale", "smol", "--out", str(tmp_path / "u"), "steps=1", "prompts_per_step=4",
            "inner_batch=16", "val_prompts=16", "max_new_tokens=16", "threads=2")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in (tmp_path / "u" / "metrics.jsonl").read_text().splitlines()]
    assert [x["split"] for x in rows] == ["val", "train", "val"]
    for x in rows: assert {"uuid_hit_rate", "uuid_prefix_len", "phi"} <= set(x)
