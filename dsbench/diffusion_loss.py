"""DiT's training loss (ADM's "hybrid" objective, Nichol & Dhariwal 2021): ε-MSE, plus, for a model that
also predicts its variance (learned σ: 2·C output channels), the variational bound's term at t for that
variance alone.

diffusers has no such loss (its schedulers sample; its training examples use ε-MSE only), so it is written
here by hand from the formulas of the DDPM posterior. Conventions, as ADM's with DiT's settings:

- the first C output channels are ε, the last C a value v that interpolates the log-variance between the
  posterior's clipped log β̃_t (v = −1) and log β_t (v = +1);
- in the bound, the mean comes from ε with its gradient stopped: the bound trains only the variance, and
  ε-MSE alone trains the mean;
- the bound's term is KL(q(x_{t−1}|x_t, x_0) ‖ p(x_{t−1}|x_t)) for t > 0 and the discretised-Gaussian
  decoder NLL −log p(x_0|x_1) at t = 0 (data in [−1, 1] on 256 levels), both in bits per dimension;
- loss = mean ε-MSE + bound, λ = 1 (DiT's learn_sigma with the plain MSE loss type: no rescaling).
"""
from __future__ import annotations

import math

import torch


class PosteriorTerms:
    """The DDPM posterior's coefficients at every t, from the betas (kept in float64)."""

    def __init__(self, betas: torch.Tensor):
        b = betas.double()
        a = 1 - b
        ab = torch.cumprod(a, 0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        var = b * (1 - ab_prev) / (1 - ab)
        self.num_timesteps = len(b)
        self.log_beta = b.log()
        # β̃_0 = 0: its log is clipped to β̃_1's, as the variance interpolation needs a finite lower end.
        self.log_var_clipped = torch.cat([var[1:2], var[1:]]).log()
        self.coef_x0 = b * ab_prev.sqrt() / (1 - ab)
        self.coef_xt = (1 - ab_prev) * a.sqrt() / (1 - ab)
        self.recip_sqrt_ab = (1 / ab).sqrt()
        self.sqrt_recip_ab_m1 = (1 / ab - 1).sqrt()

    @staticmethod
    def at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped (B, 1, …) to broadcast over `like`, in its dtype and on its device."""
        return values.to(like.device)[t].to(like.dtype).view(-1, *(1,) * (like.ndim - 1))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_std_normal_cdf(x):
    """Φ(x) by the tanh approximation ADM uses for its decoder (|error| < 2e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretised_gaussian_nll(x, mean, log_scale):
    """−log P(x) in nats, elementwise, for x on 256 levels in [−1, 1] (bin half-width 1/255) under
    N(mean, e^{2·log_scale}); the end bins extend to ±∞ so the 256 probabilities sum to one."""
    inv_std = torch.exp(-log_scale)
    upper = approx_std_normal_cdf(inv_std * (x - mean + 1 / 255))
    lower = approx_std_normal_cdf(inv_std * (x - mean - 1 / 255))
    log_p = torch.where(x < -0.999, torch.log(upper.clamp(min=1e-12)),
                        torch.where(x > 0.999, torch.log((1 - lower).clamp(min=1e-12)),
                                    torch.log((upper - lower).clamp(min=1e-12))))
    return -log_p


def diffusion_loss(out: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   terms: PosteriorTerms) -> dict[str, torch.Tensor]:
    """Per-sample terms (B,): `mse` (mean over dimensions), `vb` (bits per dimension; zeros without learned
    σ) and `loss` = mse + vb. `out` is the model output: C channels (ε) or 2·C (ε and the variance value)."""
    c = x0.shape[1]
    if out.shape[1] not in (c, 2 * c):
        raise ValueError(f"the model outputs {out.shape[1]} channels for {c}-channel data: expected {c} (ε) "
                         f"or {2 * c} (ε and the learned variance)")
    eps = out[:, :c]
    dims = tuple(range(1, x0.ndim))
    mse = ((eps - noise) ** 2).mean(dim=dims)
    if out.shape[1] == c:
        return {"mse": mse, "vb": torch.zeros_like(mse), "loss": mse}
    at = lambda v: terms.at(v, t, x0)
    frac = (out[:, c:] + 1) / 2
    log_var = frac * at(terms.log_beta) + (1 - frac) * at(terms.log_var_clipped)
    x0_pred = at(terms.recip_sqrt_ab) * xt - at(terms.sqrt_recip_ab_m1) * eps.detach()  # frozen mean
    mean = at(terms.coef_x0) * x0_pred + at(terms.coef_xt) * xt
    true_mean = at(terms.coef_x0) * x0 + at(terms.coef_xt) * xt
    kl = normal_kl(true_mean, at(terms.log_var_clipped), mean, log_var).mean(dim=dims)
    nll = discretised_gaussian_nll(x0, mean, 0.5 * log_var).mean(dim=dims)
    vb = torch.where(t.to(x0.device) == 0, nll, kl) / math.log(2.0)
    return {"mse": mse, "vb": vb, "loss": mse + vb}
