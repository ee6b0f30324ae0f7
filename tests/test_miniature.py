"The cpu miniatures of language and UUID: the languages and their classifier, the pre-trained generator, Φ's rewards, the recipe's keys under a baseline, and a CLI run of each."
import json, subprocess, sys
import pytest, torch
from dpg_nb.models import tiny_lm
from dpg_nb.miniature import Bigrams, BigramLanguageMetric, TokenUUIDMetric, UUID_IDS, pretrain, token_rows
from dpg_nb.config import resolve, UserError
from dpg_nb.metagrad import rewards
from dpg_nb.optim import SGD, AdamW

def test_likelihood_ratio_reads_each_language():
    L = Bigrams(32, seed=3)
    g = torch.Generator().manual_seed(0)
    a, b = L.sample("A", 200, 12, g), L.sample("B", 200, 12, g)
    assert (L.llr(a.tolist()) < 0).all() and (L.llr(b.tolist()) > 0).all()
    assert torch.allclose(L.trans["B"].sum(1), torch.ones(32, dtype=torch.float64))

def test_rewards_favour_rows_of_the_second_language():
    L = Bigrams(64, seed=0)
    g = torch.Generator().manual_seed(2)
    X = torch.cat([L.sample("A", 6, 12, g), L.sample("B", 6, 12, g)])
    t = tiny_lm(64, 16, 1, seed=4, dtype=torch.float64)
    m = BigramLanguageMetric(t, L, "lastword", n_eval=16, length=12, seed=1)
    for opt in (SGD(0.1), AdamW(lr=1e-3, eps_root=1e-3)):
        r = rewards(t, X, m, opt, batch_size=4, loss_mask=torch.ones_like(X, dtype=torch.bool))
        assert r[6:].mean() > r[:6].mean(), opt

def test_pretrained_generator_writes_the_first_language():
    L = Bigrams(32, seed=1)
    gen = tiny_lm(32, 32, 1, seed=1)
    pretrain(gen, L, 2, 8, steps=150, seed=1)
    from dpg_nb.rollouts import sample
    p = torch.randint(0, 32, (256, 2), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(): ro = sample(gen, p, torch.ones_like(p, dtype=torch.bool), 1, 8, generator=torch.Generator().manual_seed(0))
    share = (L.llr(ro.response_ids.tolist()) > 0).double().mean()
    assert share < 0.15

def test_uuid_readable_matches_token_ids_not_characters():
    m = TokenUUIDMetric(tiny_lm(64, 16, 1, seed=0))
    s = " ".join(map(str, UUID_IDS))
    assert m.readable_texts([s, "1 " + s[:6], "13 15 6"]) == dict(uuid_hit_rate=1/3, uuid_prefix_len=8)
    assert token_rows(["3 15", ""]) == [[3, 15], []]

def test_baseline_rewards_take_their_defaults_on_the_recipe():
    c = resolve("uuid", overrides=dict(reward="naive"))
    assert (c.grouping, c.credit, c.reward_eps_root, c.kl_coef) == ("cross", "row", -1.0, 0.04)
    with pytest.raises(UserError, match="needs text"): resolve("language", overrides=dict(reward="embedding"))
    with pytest.raises(UserError, match="needs reward=dpg"): resolve("language", overrides=dict(reward="langid", credit="token"))

@pytest.mark.parametrize("exp,key", [("language", "lang_share"), ("uuid", "uuid_hit_rate")])
def test_cli_runs_each_miniature(tmp_path, exp, key):
    small = ["steps=2", "val_every=2", "prompts_per_step=8", "inner_batch=4", "val_prompts=16", "val_inner_batch=8", "val_small=8",
             "minibatch=16", "gen_hidden=16", "target_hidden=16", "max_new_tokens=8"]
    r = subprocess.run([sys.executable, "-m", "dpg_nb.cli", "run", exp, "--out", str(tmp_path / "r"), "--no-progress", *small],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if x["split"] == "val"] == [0, 2] and key in rows[-2]
