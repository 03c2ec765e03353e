"""Correct implementations written the way students write them, as patches on the live reference.

Each is mathematically the handout's algorithm, computed in another (equally valid) form: from other
buffers, in float32 or float64, with other indexing or noise calls. Each must get full marks, graded
twice (tests/test_grading_validity.py); tests/margins.py reports how close each comes to the
allowances. The files in correct/ are further alternates, written out in full.
"""

from dataclasses import dataclass

from .mutants import REFERENCE, Mutant

Q_SAMPLE = ("        return (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0\n"
            "                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_0.shape) * noise)\n")
P_SAMPLE_HEAD = (
    "        predicted_noise = self.model(x, t)\n"
    "        x0_hat = ((x - extract(self.sqrt_one_minus_alphas_cumprod, t, x.shape) * predicted_noise)\n"
    "                  / extract(self.sqrt_alphas_cumprod, t, x.shape))\n"
    "        x0_hat = x0_hat.clamp(-1.0, 1.0)\n"
    "        mean, variance = self.q_posterior(x0_hat, x, t)\n")
LAST_STEP = ("        if t_index == 0:\n"
             "            return mean\n"
             "        return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)\n")
SCHEDULE_BODY = ("    steps = torch.arange(timesteps + 1, dtype=torch.float64)\n"
                 "    f = torch.cos(((steps / timesteps) + s) / (1 + s) * math.pi / 2) ** 2\n"
                 "    alphas_cumprod = f / f[0]\n"
                 "    alphas = alphas_cumprod[1:] / alphas_cumprod[:-1]\n"
                 "    return torch.clip(alphas, 0.001, 1.0)\n")
INIT_BUFFERS = "        alphas = SCHEDULES[schedule](self.num_timesteps).to(torch.float64)\n"
REGISTER = ("        def register(name, value):\n"
            "            self.register_buffer(name, value.to(torch.float32))\n")
EXTRACT = "    out = a.gather(-1, t)\n"
NOISE = "        return torch.randn(shape, device=device)\n"
L1 = "        return LOSSES[self.loss_type](predicted_noise, noise)\n"


@dataclass(frozen=True)
class Alternate:
    name: str
    why: str  # how it differs from the reference
    patches: tuple  # ((old, new), ...) on the reference

    def source(self):
        text = REFERENCE.read_text()
        for old, new in self.patches:
            text = Mutant(self.name, self.why, old, new, ()).apply(text)
        return text


ALTERNATES = [
    Alternate("q_sample_from_alphas_cumprod",
              "q_sample from extract(alphas_cumprod) and sqrt, not the sqrt buffers",
              ((Q_SAMPLE,
                "        abar = extract(self.alphas_cumprod, t, x_0.shape)\n"
                "        return torch.sqrt(abar) * x_0 + torch.sqrt(1 - abar) * noise\n"),)),
    Alternate("p_sample_eq3_inline_float32",
              "p_sample with eq. (3) written out from the float32 alphas, alphas_cumprod and "
              "alphas_cumprod_prev buffers (q_posterior not called), x0_hat from alphas_cumprod",
              ((P_SAMPLE_HEAD,
                "        eps = self.model(x, t)\n"
                "        a = extract(self.alphas, t, x.shape)\n"
                "        ab = extract(self.alphas_cumprod, t, x.shape)\n"
                "        ab_prev = extract(self.alphas_cumprod_prev, t, x.shape)\n"
                "        x0_hat = ((x - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)).clamp(-1, 1)\n"
                "        mean = (torch.sqrt(ab_prev) * (1 - a) / (1 - ab) * x0_hat\n"
                "                + torch.sqrt(a) * (1 - ab_prev) / (1 - ab) * x)\n"
                "        variance = (1 - ab_prev) / (1 - ab) * (1 - a)\n"),)),
    Alternate("p_sample_eps_form_float64",
              "the eps-form of the mean, (x - (1 - alpha) / sqrt(1 - abar) eps_hat) / sqrt(alpha), "
              "with eps_hat re-derived from the clamped x0_hat, in float64 from the buffers",
              ((P_SAMPLE_HEAD,
                "        eps = self.model(x, t).double()\n"
                "        xd = x.double()\n"
                "        a = extract(self.alphas, t, x.shape).double()\n"
                "        ab = extract(self.alphas_cumprod, t, x.shape).double()\n"
                "        ab_prev = extract(self.alphas_cumprod_prev, t, x.shape).double()\n"
                "        x0_hat = ((xd - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)).clamp(-1, 1)\n"
                "        eps_hat = (xd - torch.sqrt(ab) * x0_hat) / torch.sqrt(1 - ab)\n"
                "        mean = ((xd - (1 - a) / torch.sqrt(1 - ab) * eps_hat) / torch.sqrt(a))\n"
                "        variance = (1 - ab_prev) * (1 - a) / (1 - ab)\n"
                "        mean, variance = mean.to(x.dtype), variance.to(x.dtype)\n"),)),
    Alternate("float32_schedule_one_minus_betas",
              "the schedule in float32, as the original course starter: betas clipped to 0.999, "
              "alphas = 1 - betas, cumprod and every buffer in float32",
              ((SCHEDULE_BODY,
                "    steps = torch.arange(timesteps + 1, dtype=torch.float32)\n"
                "    f = torch.cos(((steps / timesteps) + s) / (1 + s) * math.pi / 2) ** 2\n"
                "    alphas_cumprod = f / f[0]\n"
                "    betas = torch.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)\n"
                "    return 1 - betas\n"),
               (INIT_BUFFERS, "        alphas = SCHEDULES[schedule](self.num_timesteps).float()\n"),
               ("    return torch.linspace(alpha_start, alpha_end, timesteps, dtype=torch.float64)\n",
                "    return torch.linspace(alpha_start, alpha_end, timesteps)\n"))),
    Alternate("last_step_torch_where",
              "no `if`: noise masked with torch.where(t == 0, 0, 1) (a boolean mask per example)",
              ((LAST_STEP,
                "        nonzero = torch.where(t == 0, 0.0, 1.0).reshape(-1, *([1] * (x.dim() - 1)))\n"
                "        return mean + nonzero * torch.sqrt(variance) * self.noise_like(x.shape, x.device)\n"),)),
    Alternate("extract_by_indexing",
              "extract with a[t] (advanced indexing) instead of gather",
              ((EXTRACT, "    out = a[t]\n"),)),
    Alternate("float64_throughout",
              "every function computes in float64 (buffers and inputs cast up), results cast back",
              ((Q_SAMPLE,
                "        xd, nd = x_0.double(), noise.double()\n"
                "        out = (extract(self.sqrt_alphas_cumprod.double(), t, x_0.shape) * xd\n"
                "               + extract(self.sqrt_one_minus_alphas_cumprod.double(), t, x_0.shape) * nd)\n"
                "        return out.to(x_0.dtype)\n"),
               (P_SAMPLE_HEAD,
                "        predicted_noise = self.model(x, t).double()\n"
                "        xd = x.double()\n"
                "        x0_hat = ((xd - extract(self.sqrt_one_minus_alphas_cumprod.double(), t, x.shape)\n"
                "                   * predicted_noise) / extract(self.sqrt_alphas_cumprod.double(), t, x.shape))\n"
                "        x0_hat = x0_hat.clamp(-1.0, 1.0)\n"
                "        mean = (extract(self.posterior_mean_coef1.double(), t, x.shape) * x0_hat\n"
                "                + extract(self.posterior_mean_coef2.double(), t, x.shape) * xd)\n"
                "        variance = extract(self.posterior_variance.double(), t, x.shape)\n"),
               (LAST_STEP,
                "        if t_index == 0:\n"
                "            return mean.to(x.dtype)\n"
                "        z = self.noise_like(x.shape, x.device).double()\n"
                "        return (mean + torch.sqrt(variance) * z).to(x.dtype)\n"))),
    Alternate("noise_via_normal_",
              "noise drawn with torch.empty(...).normal_(), and the L1 loss written out",
              ((NOISE, "        return torch.empty(shape, device=device).normal_()\n"),
               (L1, "        if self.loss_type == 'l1':\n"
                    "            return (noise - predicted_noise).abs().mean()\n"
                    "        return ((noise - predicted_noise) ** 2).mean()\n"))),
    Alternate("recip_sqrt_x0_hat",
              "x0_hat = sqrt(1 / abar) x - sqrt(1 / abar - 1) eps from alphas_cumprod (the original "
              "DDPM code's form), and sigma * z added at every step (the variance is 0 at t = 0)",
              ((P_SAMPLE_HEAD,
                "        predicted_noise = self.model(x, t)\n"
                "        ab = extract(self.alphas_cumprod, t, x.shape)\n"
                "        x0_hat = torch.sqrt(1.0 / ab) * x - torch.sqrt(1.0 / ab - 1) * predicted_noise\n"
                "        x0_hat = x0_hat.clamp(-1.0, 1.0)\n"
                "        mean, variance = self.q_posterior(x0_hat, x, t)\n"),
               (LAST_STEP,
                "        return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)\n"))),
]
