"""Checks of `dpg_nb.theory` outside the notebook: input validation, and the two exact identities of the
theory page (score function, leave-one-out baseline) on a toy with prompts that the page does not use."""
import pytest, torch
from dpg_nb.theory import (all_datasets, log_policy, scores, sample_datasets, train, Toy, dataset_probs, expect,
                           exact_J, per_dataset_estimates, group_advantages)
from dpg_nb.optim import SGD, AdamW

f64 = torch.float64

def _toy(opt, b):
    g = torch.Generator().manual_seed(3)
    phi0 = 0.4 * torch.randn(3, generator=g, dtype=f64)
    return Toy(phi0, torch.tensor([0.2, 0.5, 0.3], dtype=f64), opt, b)

def test_bad_inputs():
    th = torch.zeros(2, 3, dtype=f64)
    with pytest.raises(ValueError, match="pass `prompts`"): log_policy(th, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="prompt ids"): log_policy(th, torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="tokens must lie"): log_policy(th, torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(TypeError): scores([0.0, 1.0], torch.tensor([0]))
    with pytest.raises(ValueError, match="too many"): all_datasets(4, 12)
    with pytest.raises(ValueError, match="do not split"): train(torch.zeros(3, dtype=f64), torch.tensor([0, 1, 2]),
                                                                torch.ones(3, dtype=f64), SGD(lr=0.1), 2)
    with pytest.raises(ValueError, match="kind"): group_advantages(torch.ones(2, 3), "median")
    with pytest.raises(ValueError, match="renorm"): _toy(SGD(lr=1.0), 1).loo(torch.tensor([[0, 1]]), renorm=True)

@pytest.mark.parametrize("opt", [SGD(lr=0.8), AdamW(lr=0.05)], ids=["sgd", "adamw"])
def test_exact_identities_with_prompts(opt):
    prompts, n = torch.tensor([1, 0, 1]), 3
    theta = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.4, 0.0]], dtype=f64)
    toy = _toy(opt, b=3)
    th = theta.clone().requires_grad_()
    grad = torch.autograd.grad(exact_J(toy, th, n, prompts), th)[0]
    X = all_datasets(3, n)
    e = {k: expect(dataset_probs(theta, X, prompts), v) for k, v in per_dataset_estimates(toy, theta, X, prompts).items()}
    torch.testing.assert_close(e["naive"], grad, atol=1e-14, rtol=0)
    torch.testing.assert_close(e["loo"], grad, atol=1e-14, rtol=0)
    assert (e["dpg"] - grad).norm() > 1e-6     # DPG is biased; the toy must show it

def test_sampler_matches_policy():
    theta = torch.tensor([0.5, -0.5, 0.0], dtype=f64)
    x = sample_datasets(theta, 20000, 2, seed=1)
    freq = torch.bincount(x.flatten(), minlength=3).to(f64) / x.numel()
    torch.testing.assert_close(freq, theta.softmax(-1), atol=0.01, rtol=0)
