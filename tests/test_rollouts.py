"""End-to-end checks of the generation side (data -> rollouts -> rewards -> advantages -> policy update).
The lesson-sized checks live in nbs/05_data, 06_rollouts and 07_policy; these tie the pieces together."""
import copy, math, time, warnings
import pytest, torch
from dpg_nb.data import token_prompts, prose_passages, rephrase_prompts, split, tiny_tokenizer
from dpg_nb.models import tiny_lm
from dpg_nb.rollouts import sample, for_target, token_logprobs, encode_prompts, empty_rows
from dpg_nb.policy import advantages, policy_step, gen_optimizer


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cpu_step_with_metagradient_rewards():
    "One DPG generator step at cpu scale: token prompts, rollouts, exact rewards, GRPO, PPO update."
    from dpg_nb.metagrad import rewards
    from dpg_nb.optim import AdamW
    gen, tgt = tiny_lm(vocab_size=64, hidden_size=32, seed=0), tiny_lm(vocab_size=64, hidden_size=16, seed=1)
    P = token_prompts(4, 4, 64, seed=0)
    ro = sample(gen, P, torch.ones_like(P, dtype=torch.bool), G=4, max_new_tokens=8,
                generator=torch.Generator().manual_seed(0))
    x, m = for_target(ro)
    assert x.shape == (16, 8) and not empty_rows(m)
    metric = lambda p: -p["lm_head.weight"].pow(2).sum()
    r = rewards(tgt, x, metric, opt=AdamW(lr=1e-3), batch_size=16, loss_mask=m)
    assert r.shape == (16,) and torch.isfinite(r).all() and r.abs().max() > 0
    A = advantages(r, ro.group)
    before = [p.detach().clone() for p in gen.parameters()]
    st = policy_step(gen, gen_optimizer(gen, lr=1e-3), ro, A, minibatch_size=8)
    assert st["steps"] == 2 and math.isfinite(st["loss"]) and st["grad_norm"] > 0
    assert any((p.detach() != b).any() for p, b in zip(gen.parameters(), before))


def test_nonfinite_rewards_never_reach_the_generator():
    gen = tiny_lm(vocab_size=64, hidden_size=32, seed=0)
    P = token_prompts(2, 4, 64, seed=0)
    ro = sample(gen, P, torch.ones_like(P, dtype=torch.bool), G=4, max_new_tokens=6,
                generator=torch.Generator().manual_seed(0))
    r = torch.tensor([1., float("nan"), 3., 2., float("inf"), 1., 2., 0.])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        A, st = advantages(r, ro.group, return_stats=True)
    assert st["skipped"] == 2 and any("skipped 2 of 8" in str(x.message) for x in w)
    assert A[1] == 0 and A[4] == 0 and torch.isfinite(A).all()
    policy_step(gen, gen_optimizer(gen, lr=1e-2), ro, A, minibatch_size=4)
    assert all(torch.isfinite(p).all() for p in gen.parameters())
    with pytest.raises(ValueError, match="finite"):
        policy_step(gen, gen_optimizer(gen), ro, r, minibatch_size=4)


def test_text_pipeline_with_two_tokenizers():
    "Prose prompts -> chat template -> rollouts -> re-tokenized for a target with another tokenizer."
    gtok, ttok = tiny_tokenizer(320), tiny_tokenizer(300)
    train, test = split(prose_passages(20), 0.2)
    assert len(test) == 4 and not set(train) & set(test)
    ids, mask = encode_prompts(gtok, rephrase_prompts(test[:2]))
    gen = tiny_lm(vocab_size=len(gtok), hidden_size=32, seed=0, max_len=512)
    ro = sample(gen, ids, mask, G=2, max_new_tokens=10, eos_id=gtok.eos_token_id, pad_id=gtok.pad_token_id,
                generator=torch.Generator().manual_seed(0), tokenizer=gtok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, m = for_target(ro, gtok, ttok, max_len=8)
    assert x.shape[0] == 4 and x.shape[1] <= 8
    for row, k, t in zip(x, m, ro.texts):
        n = int(k.sum()) + 1 if k.any() else 0
        if n: assert t.startswith(ttok.decode(row[:n]))      # a prefix of the text (truncated to 8 tokens)


@pytest.mark.slow
def test_smollm2_sample_and_update():
    "The real generator: sampling is reproducible, log-probs match, one PPO step runs and moves the weights."
    from dpg_nb.models import smollm2
    gen, tok = smollm2()
    ids, mask = encode_prompts(tok, rephrase_prompts([p for p in prose_passages() if len(p) < 260][:2]))
    kw = dict(G=2, max_new_tokens=16, tokenizer=tok, pad_id=tok.pad_token_id)
    t0 = time.time()
    ro = sample(gen, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    t_sample = time.time() - t0
    assert torch.equal(ro.response_ids, sample(gen, ids, mask, generator=torch.Generator().manual_seed(0), **kw).response_ids)
    with torch.no_grad(): lp = token_logprobs(gen, ro)
    assert (lp - ro.logprobs).abs().max() < 1e-3
    ref = copy.deepcopy(gen).requires_grad_(False)
    t0 = time.time()
    st = policy_step(gen, gen_optimizer(gen, lr=1e-6), ro, torch.tensor([1., -1., -1., 1.]), minibatch_size=4,
                     microbatch_size=2, ref_model=ref, kl_coef=0.0)
    print(f"SmolLM2: sampled 4x16 tokens in {t_sample:.1f}s, one policy step in {time.time() - t0:.1f}s: {st}")
    assert st["steps"] == 1 and st["clip_frac"] == 0 and abs(st["ppo_kl"]) < 1e-3 and st["kl"] < 1e-6
    assert any((p != q).any() for p, q in zip(gen.parameters(), ref.parameters()))
