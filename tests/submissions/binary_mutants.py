"""Part 2: plausible student bugs and correct alternates, as exact text substitutions on the live
reference solutions/binary_diffusion.py (so they never drift from it).

Each mutant must lose points in a graded test whose name starts with one of its `loses` prefixes
and nowhere else (one bug, one function); each alternate is correct, written differently, and must
get full marks. tests/test_grading_validity_binary.py checks both with the real engine.
"""

from dataclasses import dataclass
from pathlib import Path

from submissions.mutants import Mutant

REFERENCE = Path(__file__).resolve().parents[2] / "solutions" / "binary_diffusion.py"


def source(patches, reference=REFERENCE):
    """The reference with every (old, new) of `patches` applied (each old occurs exactly once)."""
    text = Path(reference).read_text()
    for old, new in patches:
        count = text.count(old)
        if count != 1:
            raise ValueError(f"the text to replace occurs {count} times in the reference "
                             f"(expected once); update the catalogue:\n{old}")
        text = text.replace(old, new)
    return text


def mutant_source(mutant):
    return source([(mutant.old, mutant.new)])


KEEP = "keep = (1.0 - 2.0 * float(delta)) ** t.to(torch.float64)"
RETURN_SCHEDULE = "return 1.0 - keep, (1.0 + keep) / 2.0"
SAME_PREV = "same_prev = self.p_same[t - 1].reshape(-1, 1, 1, 1)"
RHO = "rho = torch.where(y_0 > 0, same_prev, 1.0 - same_prev)"
LIKE_PLUS = "like_plus = torch.where(y_t > 0, 1.0 - self.delta, self.delta)"
MIX = "return x0_hat * a + (1.0 - x0_hat) * b"
LOG_Q = "log_q = torch.logaddexp(log_hat_plus + torch.log(a), log_hat_minus + torch.log(b))"
LOG_NOT_Q = ("log_not_q = torch.logaddexp(log_hat_plus + torch.log1p(-a),\n"
             "                                    log_hat_minus + torch.log1p(-b))")
KL = ("kl = (torch.xlogy(p, p) + torch.xlogy(1.0 - p, 1.0 - p)\n"
      "              - p * log_q - (1.0 - p) * log_not_q)")
REDUCE = "return kl.flatten(1).sum(1).mean()"
DRAW_T = "t = torch.randint(1, self.num_timesteps + 1, (y_0.shape[0],), device=y_0.device)"
DRAW_COIN = "u_coin = self.uniform_like(y_0.shape, y_0.device)"
THRESHOLD = "return torch.where(u < q, 1.0, -1.0).to(y_t.dtype)"
LOOP = "for step in range(self.num_timesteps, 0, -1):"
CHAIN = "chain = [y]\n"
POSTERIOR_BODY = REFERENCE.read_text()[
    REFERENCE.read_text().index(SAME_PREV):
    REFERENCE.read_text().index("return joint_plus / (joint_plus + (1.0 - rho) * like_minus)")
    + len("return joint_plus / (joint_plus + (1.0 - rho) * like_minus)")]
Y_T = "y_T = torch.where(self.uniform_like(shape, device) < 0.5, 1.0, -1.0)"

MUTANTS = [
    # --- schedule ---
    Mutant("replace_prob_delta_not_2delta",
           "the probability of replacement per step taken as delta (the flip probability), not 2 delta",
           KEEP, "keep = (1.0 - float(delta)) ** t.to(torch.float64)", ("schedule",)),
    Mutant("p_same_is_keep",
           "P(Y_t = Y_0) taken as the probability of never being replaced (forgets the fresh coin "
           "lands on Y_0 half of the time)",
           RETURN_SCHEDULE, "return 1.0 - keep, keep", ("schedule",)),
    Mutant("p_same_one_minus_delta_power",
           "P(Y_t = Y_0) = (1 - delta)^t: as if a flipped pixel could never flip back",
           RETURN_SCHEDULE,
           "return 1.0 - keep, (1.0 - float(delta)) ** t.to(torch.float64)", ("schedule",)),
    # --- logits_to_probs ---
    Mutant("sigmoid_forgotten", "the raw logits used as probabilities",
           "return torch.sigmoid(logits)", "return logits", ("logits_to_probs",)),
    Mutant("tanh_for_sigmoid", "tanh, whose range is (-1, 1), used as the activation",
           "return torch.sigmoid(logits)", "return torch.tanh(logits)", ("logits_to_probs",)),
    Mutant("sigmoid_overflows", "exp(x) / (1 + exp(x)): inf / inf = NaN for large logits",
           "return torch.sigmoid(logits)",
           "return torch.exp(logits) / (1.0 + torch.exp(logits))", ("logits_to_probs",)),
    # --- q_sample ---
    Mutant("replaced_pixels_flipped", "a replaced pixel is flipped instead of set to a fresh coin",
           "return torch.where(replaced, coin, y_0)", "return torch.where(replaced, -y_0, y_0)",
           ("q_sample",)),
    Mutant("q_sample_first_t_for_all", "the first example's t used for the whole batch",
           "replaced = u_replace < self.p_replaced[t].reshape(-1, 1, 1, 1)",
           "replaced = u_replace < self.p_replaced[t[0]]", ("q_sample",)),
    Mutant("q_sample_draws_its_own", "fresh uniforms drawn instead of the given ones",
           "replaced = u_replace < self.p_replaced[t].reshape(-1, 1, 1, 1)",
           "replaced = torch.rand_like(u_replace) < self.p_replaced[t].reshape(-1, 1, 1, 1)",
           ("q_sample",)),
    # --- q_posterior ---
    Mutant("prior_at_t", "the prior of Y_{t-1} taken from step t instead of t - 1",
           SAME_PREV, "same_prev = self.p_same[t].reshape(-1, 1, 1, 1)", ("q_posterior",)),
    Mutant("posterior_only_for_plus", "the formula for y_0 = +1 used for both signs of y_0",
           RHO, "rho = same_prev + 0 * y_0", ("q_posterior",)),
    Mutant("likelihood_swapped", "the likelihoods of y_t given Y_{t-1} = +1 / -1 swapped",
           LIKE_PLUS, "like_plus = torch.where(y_t > 0, self.delta, 1.0 - self.delta)",
           ("q_posterior",)),
    # --- reverse_probs ---
    Mutant("mixture_weights_swapped", "the posterior for y_0 = -1 weighted by P(Y_0 = +1)",
           MIX, "return x0_hat * b + (1.0 - x0_hat) * a", ("reverse_probs",)),
    Mutant("mixture_uses_logits", "the logits mixed in without the sigmoid (inside reverse_probs)",
           "x0_hat = logits_to_probs(logits)\n", "x0_hat = logits\n", ("reverse_probs",)),
    # --- p_loss ---
    Mutant("kl_reversed", "KL(model || posterior) instead of KL(posterior || model)",
           KL, "kl = (torch.exp(log_q) * (log_q - torch.log(p)) + torch.exp(log_not_q) * "
               "(log_not_q - torch.log1p(-p)))", ("p_loss",)),
    Mutant("loss_mean_over_pixels", "averaged over pixels too, not summed over them",
           REDUCE, "return kl.mean()", ("p_loss",)),
    Mutant("loss_summed_over_batch", "summed over the batch instead of averaged",
           REDUCE, "return kl.sum()", ("p_loss",)),
    Mutant("log_of_zero", "log Q from the probabilities: log(0) = -inf for large logits",
           LOG_Q + "\n        " + LOG_NOT_Q,
           "q = torch.sigmoid(logits) * a + torch.sigmoid(-logits) * b\n"
           "        log_q, log_not_q = torch.log(q), torch.log(1.0 - q)", ("p_loss",)),
    Mutant("zero_log_zero_not_zero", "p log p with torch.log: 0 * log 0 = NaN at t = 1",
           "torch.xlogy(p, p) + torch.xlogy(1.0 - p, 1.0 - p)",
           "p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p)", ("p_loss",)),
    Mutant("loss_detached", "the loss computed from detached logits (no gradient reaches the model)",
           "logits = self.model(y_t, t).float()", "logits = self.model(y_t, t).float().detach()",
           ("p_loss",)),
    # --- forward ---
    Mutant("t_once_per_batch", "one t drawn for the whole batch",
           DRAW_T, "t = torch.randint(1, self.num_timesteps + 1, (1,), device=y_0.device)"
                   ".expand(y_0.shape[0])", ("forward",)),
    Mutant("t_from_zero", "t drawn from 0..T-1 (part 1's index convention)",
           DRAW_T, "t = torch.randint(0, self.num_timesteps, (y_0.shape[0],), device=y_0.device)",
           ("forward",)),
    Mutant("same_uniforms_twice", "the replacement and the coin decided by one uniform",
           DRAW_COIN, "u_coin = u_replace", ("forward",)),
    # --- p_sample ---
    Mutant("p_sample_returns_probabilities", "Q itself returned instead of a sample",
           THRESHOLD, "return q.to(y_t.dtype)", ("p_sample",)),
    Mutant("p_sample_threshold_reversed", "-1 where u < Q (the samples' signs swapped)",
           THRESHOLD, "return torch.where(u < q, -1.0, 1.0).to(y_t.dtype)", ("p_sample",)),
    Mutant("p_sample_ignores_u", "always draws its own uniforms, even when u is given",
           "if u is None:\n            u = self.uniform_like(y_t.shape, y_t.device)",
           "u = self.uniform_like(y_t.shape, y_t.device)", ("p_sample",)),
    # --- p_sample_loop ---
    Mutant("chain_run_upward", "the reverse chain run from t = 1 up to T",
           LOOP, "for step in range(1, self.num_timesteps + 1):", ("p_sample_loop",)),
    Mutant("chain_off_by_one", "steps T-1, ..., 0 (part 1's index convention)",
           LOOP, "for step in range(self.num_timesteps - 1, -1, -1):", ("p_sample_loop",)),
    Mutant("chain_without_start", "the chain lacks Y_T (T states instead of T + 1)",
           CHAIN, "chain = []\n", ("p_sample_loop",)),
    # --- sample ---
    Mutant("sample_not_mapped", "returns {-1, +1} images instead of {0, 1}",
           "return to_unit_range(self.p_sample_loop(y_T))", "return self.p_sample_loop(y_T)",
           ("sample",)),
    Mutant("sample_biased_coins", "Y_T with P(+1) = 0.2 instead of fair coins",
           Y_T, "y_T = torch.where(self.uniform_like(shape, device) < 0.2, 1.0, -1.0)",
           ("sample",)),
]


@dataclass(frozen=True)
class Alternate:
    name: str
    why: str       # how it differs from the reference
    patches: tuple  # (old, new) substitutions on the reference


ALTERNATES = [
    Alternate(
        "float64_arithmetic_forms",
        "float64 everywhere, arithmetic instead of torch.where, the posterior in odds form, the "
        "mixture as b + h (a - b), the KL via torch.special.entr, torch.bernoulli for drawn samples",
        (
            (KEEP + "\n    " + RETURN_SCHEDULE,
             "keep = torch.pow(torch.tensor(1.0 - 2.0 * delta, dtype=torch.float64), t.double())\n"
             "    p_replaced = -torch.expm1(torch.log1p(torch.tensor(-2.0 * delta, "
             "dtype=torch.float64)) * t.double()) if delta < 0.5 else 1.0 - keep\n"
             "    return p_replaced, 1.0 - p_replaced / 2.0"),
            ("coin = torch.where(u_coin < 0.5, 1.0, -1.0).to(y_0.dtype)\n"
             "        return torch.where(replaced, coin, y_0)",
             "coin = 2.0 * (u_coin < 0.5).double() - 1.0\n"
             "        r = replaced.double()\n"
             "        return (y_0.double() * (1.0 - r) + coin * r).to(y_0.dtype)"),
            (POSTERIOR_BODY,
             "s = self.p_same.double()[t - 1].reshape(-1, 1, 1, 1)\n"
             "        x, y = y_0.double(), y_t.double()\n"
             "        rho = 0.5 + x * (s - 0.5)\n"
             "        lr = ((1.0 - self.delta) / self.delta) ** y  # likelihood ratio of +1 vs -1\n"
             "        odds = rho / (1.0 - rho) * lr\n"
             "        return torch.where(rho >= 1.0, torch.ones_like(odds), "
             "torch.where(rho <= 0.0, torch.zeros_like(odds), odds / (1.0 + odds))).float()"),
            (MIX, "return b + x0_hat * (a - b)"),
            (KL, "kl = (-torch.special.entr(p) - torch.special.entr(1.0 - p)\n"
                 "              - p * log_q - (1.0 - p) * log_not_q)"),
            (THRESHOLD, "if u is None:\n"
                        "            return 2.0 * torch.bernoulli(q) - 1.0\n"
                        "        return torch.where(u < q, 1.0, -1.0).to(y_t.dtype)"),
        )),
    Alternate(
        "log_space_kl_div",
        "the loss with F.kl_div over the two outcomes stacked, log Q via torch.logsumexp; the "
        "schedule from numpy; the loop as a while loop into a preallocated chain",
        (
            (KEEP + "\n    " + RETURN_SCHEDULE,
             "import numpy as np\n"
             "    keep = torch.from_numpy(np.power(1.0 - 2.0 * delta, t.cpu().numpy().astype(np.float64)))\n"
             "    return 1.0 - keep, 0.5 + 0.5 * keep"),
            (LOG_Q + "\n        " + LOG_NOT_Q + "\n        " + KL + "\n        " + REDUCE,
             "both = torch.stack([torch.stack([log_hat_plus + torch.log(a), "
             "log_hat_minus + torch.log(b)]).logsumexp(0),\n"
             "                            torch.stack([log_hat_plus + torch.log1p(-a), "
             "log_hat_minus + torch.log1p(-b)]).logsumexp(0)])\n"
             "        target = torch.stack([p, 1.0 - p])\n"
             "        kl = F.kl_div(both, target, reduction='none').sum(0)\n"
             "        return kl.reshape(kl.shape[0], -1).sum(-1).sum() / kl.shape[0]"),
            ("y = y_T\n        chain = [y]\n        " + LOOP + "\n"
             "            t = torch.full((y.shape[0],), step, dtype=torch.long, device=y.device)\n"
             "            y = self.p_sample(y, t)\n            chain.append(y)\n"
             "        return torch.stack(chain) if return_chain else y",
             "T = self.num_timesteps\n"
             "        chain = y_T.new_empty((T + 1, *y_T.shape))\n"
             "        chain[0] = y_T\n"
             "        step = T\n"
             "        while step >= 1:\n"
             "            t = torch.full((y_T.shape[0],), step, dtype=torch.long, device=y_T.device)\n"
             "            chain[T - step + 1] = self.p_sample(chain[T - step], t)\n"
             "            step -= 1\n"
             "        return chain if return_chain else chain[-1]"),
        )),
    Alternate(
        "inline_helpers_rand_like",
        "reverse_probs and p_loss with the posterior written inline (not calling q_posterior), "
        "the sigmoid as 0.5 (1 + tanh(x / 2)), forward with torch.rand_like and randint(low=1), "
        "sample via torch.randint coins",
        (
            ("return torch.sigmoid(logits)", "return 0.5 * (1.0 + torch.tanh(0.5 * logits))"),
            ("x0_hat = logits_to_probs(logits)\n        ones = torch.ones_like(y_t)\n"
             "        a = self.q_posterior(y_t, ones, t)\n"
             "        b = self.q_posterior(y_t, -ones, t)\n",
             "x0_hat = torch.sigmoid(logits)\n"
             "        s = self.p_same[t - 1].reshape(-1, 1, 1, 1)\n"
             "        d = self.delta\n"
             "        lp = torch.where(y_t > 0, 1 - d, d)\n"
             "        lm = 1 - lp\n"
             "        a = s * lp / (s * lp + (1 - s) * lm)\n"
             "        b = (1 - s) * lp / ((1 - s) * lp + s * lm)\n"),
            (DRAW_T + "\n        u_replace = self.uniform_like(y_0.shape, y_0.device)\n        "
             + DRAW_COIN,
             "t = torch.randint(low=1, high=self.num_timesteps + 1, size=(len(y_0),)).to(y_0.device)\n"
             "        u_replace = torch.rand_like(y_0)\n"
             "        u_coin = torch.rand_like(y_0)"),
            (Y_T, "y_T = (2 * torch.randint(0, 2, shape, device=device) - 1).float()"),
        )),
]
