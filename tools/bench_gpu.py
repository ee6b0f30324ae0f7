"""One DPG step at the paper's model shapes on one GPU, the models randomly initialised (no download): the time of
sampling, rewards and the generator update, the peak GPU memory of each, and the largest inner microbatch that fits.

Shapes: the target is GPT-2 124M (`GPT2Config()` defaults, eager attention: the metagradient differentiates it
twice); the generator is shaped like Llama-3.2-1B (hidden 2048, MLP 8192, 16 layers, 32 heads, 8 KV heads, a
vocabulary of 128256, tied embeddings). The work is one rank's share of the paper's QR step on 8 GPUs, scaled
down so that the whole script ends in a few minutes: `--prompts` prompts x `--samples` rollouts of `--new-tokens`
tokens, an inner run of `--inner-steps` steps of `--inner-rows` rows (the paper: 1024 rows a step over 8 GPUs, 128
a GPU), PPO mini-batches of `--minibatch` rollouts. The last lines extrapolate the timings linearly in rows and
steps to the paper's QR step (98304 rollouts, 96 inner steps, 8 GPUs); an extrapolation, not a measurement.

Then the metagradient against the training run it differentiates, on this device: `rewards` (replay, its defaults
and every graph rebuilt) against plain SFT with `torch.optim.AdamW` of the same rows, for the step's inner run on the
GPT-2 target and for the benchmark page's target (width 128, 4 blocks, vocabulary 2048, 8 rows of 64 tokens a step)
at T = 1, 8 and 64 inner steps, with replay's peak memory.

Generated token ids are taken modulo GPT-2's vocabulary to make the target's rows (the loop maps text through the
two tokenizers instead); no EOS, so every response is `--new-tokens` long (the longest case).

    python tools/bench_gpu.py                       # on one GPU, about 3 to 6 minutes (written without a GPU: not yet run)
    python tools/bench_gpu.py --tiny --device cpu   # the script itself on tiny shapes, on a CPU (a smoke test)
"""
import argparse, json, math, os, shutil, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

def build(tiny:bool, device, gen_dtype):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    if tiny:
        tc = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=512, n_positions=256, bos_token_id=511, eos_token_id=511)
        gc = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=1024, tie_word_embeddings=True)
    else:
        tc = GPT2Config()
        gc = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         vocab_size=128256, tie_word_embeddings=True)
    torch.manual_seed(0)
    target = GPT2LMHeadModel._from_config(tc, attn_implementation="eager").to(device).eval()
    gen = LlamaForCausalLM._from_config(gc, dtype=gen_dtype).to(device).eval()
    return gen, target

def sync(device):
    if torch.device(device).type == "cuda": torch.cuda.synchronize()

def peak(device)->float:
    "Peak GPU memory since the last `reset`, GiB (NaN on a CPU: not measured)."
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else float("nan")

def reset(device):
    if torch.device(device).type == "cuda": torch.cuda.reset_peak_memory_stats()

def timed(fn, device):
    reset(device); sync(device); t0 = time.perf_counter()
    out = fn(); sync(device)
    return out, time.perf_counter() - t0, peak(device)

def sft_seconds(model, x, m, rows, mb, device)->float:
    "Plain SFT of rows `x` (`rows` a step, forward passes of `mb`) with `torch.optim.AdamW` on a copy of `model`: seconds."
    import copy
    from dpg_nb.metagrad import example_losses
    mm = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(mm.parameters(), lr=5e-6, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4)
    def run():
        for s in range(0, len(x), rows):
            opt.zero_grad()
            for u in range(s, s + rows, mb):
                (example_losses(mm(x[u:u + mb], use_cache=False).logits, x[u:u + mb], m[u:u + mb]).sum() / rows).backward()
            opt.step()
    return timed(run, device)[1]

def replay_ratios(device, tiny:bool, reps:int=3):
    "The benchmark page's target and data on `device`: replay (defaults; every graph rebuilt) against plain SFT, T = 1, 8, 64."
    from dpg_nb.metagrad import rewards
    from dpg_nb.models import tiny_lm
    from dpg_nb.optim import AdamW
    V, d, layers, L, b, Ts = (64, 16, 1, 16, 2, (1, 2)) if tiny else (2048, 128, 4, 64, 8, (1, 8, 64))
    torch.manual_seed(0)
    m = tiny_lm(vocab_size=V, hidden_size=d, n_layers=layers, n_heads=4, tie=False, max_len=L).to(device)
    head0 = m.lm_head.weight.detach()[:16, :16].clone()
    S = torch.sign(torch.randn(16, 16, generator=torch.Generator().manual_seed(2))).to(device)
    metric = lambda p: -torch.nn.functional.softplus(-20 * S * (p["lm_head.weight"][:16, :16] - head0)).mean()
    out = {}
    for T in Ts:
        ids = torch.randint(0, V, (T * b, L), generator=torch.Generator().manual_seed(1)).to(device)
        mask = torch.ones_like(ids, dtype=torch.bool)
        runs = dict(sft=lambda: sft_seconds(m, ids, mask, b, b, device),
                    replay=lambda: timed(lambda: rewards(m, ids, metric, AdamW(1e-3), b), device)[1:],
                    rebuilt=lambda: timed(lambda: rewards(m, ids, metric, AdamW(1e-3), b, graph_mb=0), device)[1:])
        ts = {k: [] for k in runs}
        for rep in range(reps + 1):                 # rep 0: warm-up, not counted
            for k, f in runs.items(): ts[k].append(f())
        sec = lambda k: statistics.median(v if k == "sft" else v[0] for v in ts[k][1:])
        out[T] = dict(sft_s=sec("sft"), replay_x=sec("replay") / sec("sft"), rebuilt_x=sec("rebuilt") / sec("sft"),
                      replay_peak_gib=max(v[1] for v in ts["replay"][1:]))
        print(f"  T={T:2d}: sft {out[T]['sft_s']:.3f} s   replay {out[T]['replay_x']:.2f}x   every graph rebuilt {out[T]['rebuilt_x']:.2f}x   "
              f"replay peak {out[T]['replay_peak_gib']:.2f} GiB", flush=True)
    return out

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda"); p.add_argument("--tiny", action="store_true")
    p.add_argument("--prompts", type=int, default=64); p.add_argument("--samples", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=64); p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--inner-rows", type=int, default=128); p.add_argument("--inner-steps", type=int, default=4)
    p.add_argument("--inner-microbatch", type=int, default=0, help="rows per forward pass in the inner run (0: the largest that fits, searched first)")
    p.add_argument("--minibatch", type=int, default=64); p.add_argument("--policy-microbatch", type=int, default=16)
    p.add_argument("--gen-dtype", default="float32"); p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    p.add_argument("--budget-s", type=float, default=420, help="stop the microbatch search past this many seconds")
    a = p.parse_args(argv)
    if a.tiny:                                      # the smoke test's sizes, unless given
        for k, v in dict(prompts=4, new_tokens=12, inner_rows=8, inner_steps=2, minibatch=8, policy_microbatch=4, prompt_len=8).items():
            if getattr(a, k) == p.get_default(k): setattr(a, k, v)
    if a.tiny and a.device == "cuda" and not torch.cuda.is_available(): a.device = "cpu"
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available(): sys.exit("no CUDA device: use --tiny --device cpu for a smoke test")
    from dpg_nb.rollouts import sample
    from dpg_nb.metagrad import rewards
    from dpg_nb.optim import AdamW
    from dpg_nb.policy import gen_optimizer, policy_step
    from dpg_nb import targets as T
    t_start = time.perf_counter()
    dev = torch.device(a.device)
    gen, target = build(a.tiny, dev, getattr(torch, a.gen_dtype))
    Vg, Vt = gen.config.vocab_size, target.config.vocab_size
    n_gen, n_tgt = sum(p.numel() for p in gen.parameters()), sum(p.numel() for p in target.parameters())
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}; generator {n_gen/1e6:.2f}M parameters ({a.gen_dtype}), "
          f"target {n_tgt/1e6:.2f}M (float32); torch {torch.__version__}", flush=True)
    head = dict(target.named_parameters(remove_duplicate=False))[T.HEAD]
    metric = T.QRMetric("dpg", head, s=20.0, error_correction="M", col0=0)
    opt = gen_optimizer(gen, lr=5e-6, weight_decay=0.01)
    g = torch.Generator(device=dev).manual_seed(0)
    ids = torch.randint(0, Vg, (a.prompts, a.prompt_len), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids, dtype=torch.bool)
    n_rows = a.inner_rows * a.inner_steps
    ckpt = tempfile.mkdtemp(prefix="dpg_bench_")      # the replay engine's states, removed by it after each call

    def inner_rows(ro):
        x = ro.response_ids % Vt
        m = ro.response_mask.clone()
        reps = math.ceil(n_rows / len(x))
        return x.repeat(reps, 1)[:n_rows].contiguous(), m.repeat(reps, 1)[:n_rows].contiguous()

    def reward(x, m, rows, mb):
        return rewards(target, x, metric, AdamW(lr=5e-6, eps_root=1e-9), rows, loss_mask=m, microbatch_size=mb, ckpt_dir=ckpt)

    # the largest inner microbatch that fits: rewards over 2 inner steps of `inner_rows` rows, microbatches doubling
    ro0 = sample(gen, ids[:max(1, a.prompts // 8)].to(dev), mask[:max(1, a.prompts // 8)].to(dev), a.samples, a.new_tokens, generator=g)
    x0, m0 = inner_rows(ro0)
    fits, tried, mb = None, [], 1
    search = a.inner_microbatch == 0
    while search and mb <= a.inner_rows and time.perf_counter() - t_start < a.budget_s:
        try:
            _, s, pk = timed(lambda: reward(x0[:2 * a.inner_rows], m0[:2 * a.inner_rows], a.inner_rows, mb), dev)
            tried.append(dict(microbatch=mb, s=round(s, 3), peak_gib=round(pk, 2))); fits = mb
            print(f"  inner microbatch {mb:5d}: fits, {s:.2f} s for 2 inner steps, peak {pk:.2f} GiB", flush=True)
        except torch.cuda.OutOfMemoryError:
            print(f"  inner microbatch {mb:5d}: out of memory", flush=True); tried.append(dict(microbatch=mb, oom=True))
            torch.cuda.empty_cache(); break
        mb *= 2
    mb = a.inner_microbatch or fits or 1
    print(f"largest inner microbatch that fits: {fits if search else 'not searched'} (of {a.inner_rows} rows a step); using {mb}", flush=True)

    rec = []
    for step in range(a.steps + 1):                 # step 0: warm-up, not counted
        ro, t_s, pk_s = timed(lambda: sample(gen, ids.to(dev), mask.to(dev), a.samples, a.new_tokens, generator=g), dev)
        x, m = inner_rows(ro)
        r, t_r, pk_r = timed(lambda: reward(x, m, a.inner_rows, mb), dev)
        adv = torch.randn(len(ro), generator=torch.Generator().manual_seed(step)).to(dev)
        _, t_u, pk_u = timed(lambda: policy_step(gen, opt, ro, adv, minibatch_size=a.minibatch, microbatch_size=a.policy_microbatch,
                                                 group=None), dev)
        gen.eval()
        rec.append(dict(sample_s=t_s, rewards_s=t_r, update_s=t_u, peak_sample_gib=pk_s, peak_rewards_gib=pk_r, peak_update_gib=pk_u))
        print(f"step {step}{' (warm-up)' if step == 0 else ''}: sampling {t_s:.2f} s, rewards {t_r:.2f} s, update {t_u:.2f} s; "
              f"peak GiB {pk_s:.2f} / {pk_r:.2f} / {pk_u:.2f}; rewards finite {bool(torch.isfinite(r).all())}", flush=True)
    med = {k: statistics.median(d[k] for d in rec[1:]) for k in rec[0]}
    N = a.prompts * a.samples
    print(f"\nmedian of {a.steps} steps, {N} rollouts of {a.new_tokens} tokens, {a.inner_steps} inner steps of {a.inner_rows} rows "
          f"(microbatch {mb}), PPO mini-batches of {a.minibatch}:")
    print(f"  sampling {med['sample_s']:.2f} s   rewards {med['rewards_s']:.2f} s   update {med['update_s']:.2f} s   "
          f"total {med['sample_s'] + med['rewards_s'] + med['update_s']:.2f} s")
    print(f"  peak GPU memory: sampling {med['peak_sample_gib']:.2f} GiB, rewards {med['peak_rewards_gib']:.2f} GiB, update {med['peak_update_gib']:.2f} GiB")
    sft_s = statistics.median(sft_seconds(target, x, m, a.inner_rows, mb, dev) for _ in range(a.steps))
    ratios = dict(gpt2_inner_run=dict(sft_s=sft_s, replay_x=med["rewards_s"] / sft_s))
    print(f"\nthe metagradient against plain SFT (torch.optim.AdamW) of the same rows, this device:")
    print(f"  GPT-2 target, the inner run above: sft {sft_s:.2f} s, rewards {med['rewards_s'] / sft_s:.2f}x", flush=True)
    print(f"  the benchmark page's target ({'tiny shapes' if a.tiny else 'width 128, 4 blocks, V 2048, 8 rows of 64 tokens'}):", flush=True)
    ratios["benchmark_target"] = replay_ratios(dev, a.tiny)
    if a.tiny or dev.type != "cuda":
        print("(tiny shapes or no GPU: no extrapolation to the paper's step; peak memory is measured on a GPU only)")
        print(json.dumps(dict(args=vars(a), microbatch_search=tried, median=med, ratios=ratios))); print(f"wall {time.perf_counter() - t_start:.0f} s")
        return
    per_gpu = 98304 // 8
    ext = dict(sample_s=med["sample_s"] * per_gpu / N, rewards_s=med["rewards_s"] * 96 / a.inner_steps * (128 / a.inner_rows),
               update_s=med["update_s"] * per_gpu / N)
    print(f"extrapolated (linear in rows and steps; not measured) to one rank of the paper's QR step on 8 GPUs "
          f"({per_gpu} rollouts, 96 inner steps of 128 rows): sampling {ext['sample_s']:.0f} s, rewards {ext['rewards_s']:.0f} s, "
          f"update {ext['update_s']:.0f} s")
    print(json.dumps(dict(args=vars(a), microbatch_search=tried, median=med, ratios=ratios, extrapolated_paper_qr_8gpu=ext)))
    print(f"wall {time.perf_counter() - t_start:.0f} s")

if __name__ == "__main__":
    try: main()
    finally: [shutil.rmtree(d, ignore_errors=True) for d in Path(tempfile.gettempdir()).glob("dpg_bench_*") if d.is_dir() and not any(d.iterdir())]
