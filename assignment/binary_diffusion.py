"""Binary (bit-flip) diffusion: images in {-1, +1}^m, noised by flipping pixels.

Forward process. Y_0 = x. At every step t = 1, ..., T each pixel of Y_{t-1} is flipped,
independently, with probability delta (0 < delta <= 1/2). Equivalently (handout, part 2): with
probability 2 delta the pixel is *replaced* by a fresh fair coin (which flips it half of the time),
otherwise it is kept.

Time convention, used everywhere in this file (unlike part 1, no shift):
    t is the paper's step, t in 1..T; t = 0 is the clean image Y_0.
    The buffers are indexed by t: p_replaced[t], p_same[t] for t = 0..T.
    The model receives t itself: model(y_t, t) with t (B,) int64 in [1, T].

Equations (numbers as in the handout, assignment/README.md, part 2):
    (B1) schedule        keep_t = (1 - 2 delta)^t            P(never replaced in steps 1..t)
                         p_replaced(t) = 1 - keep_t
                         p_same(t) = P(Y_t[j] = Y_0[j]) = keep_t + (1 - keep_t) / 2 = (1 + keep_t) / 2
    (B2) forward         Y_t[j] = fresh fair coin   with probability p_replaced(t),
                                  Y_0[j]             otherwise
    (B3) posterior       rho = P(Y_{t-1}[j] = +1 | Y_0[j] = x) = p_same(t-1) if x = +1 else 1 - p_same(t-1)
                         L(v) = P(Y_t[j] = y | Y_{t-1}[j] = v) = 1 - delta if v = y else delta
                         P(Y_{t-1}[j] = +1 | Y_t = y, Y_0 = x) = rho L(+1) / (rho L(+1) + (1 - rho) L(-1))
    (B4) model           x0_hat = sigmoid(logits) = the model's P(Y_0[j] = +1 | Y_t)
                         Q_t(Y_t)[j] = x0_hat a + (1 - x0_hat) b,   a = (B3) with x = +1, b = (B3) with x = -1
    (B5) loss            sum_j KL( Bern(P(B3) at x = Y_0) || Bern(Q_t(Y_t)[j]) ), mean over the batch,
                         t ~ Uniform{1, ..., T} per example. At t = 1, (B3) is exactly x, and the
                         loss is the cross-entropy -log P_model(Y_0 = x).
    (B6) sampling        Y_T = fair coins; Y_{t-1}[j] = +1 with probability Q_t(Y_t)[j], t = T, ..., 1.

Why the model predicts Y_0 (B4): the true reverse step P(Y_{t-1} | Y_t) is the posterior (B3)
averaged over what Y_0 could be given Y_t. A network that outputs P(Y_0 = +1 | Y_t) and mixes the
two posteriors with it can represent that average exactly, and its task (guess the clean pixel)
looks the same at every t. The loss (B5) is still the KL of the handout: only how Q_t is formed
from the network's m real outputs differs from a network that outputs Q_t directly.

Randomness: everything random is drawn from uniforms, by `uniform_like`, or passed in explicitly,
so that a given set of uniforms gives one exact answer.
"""

import torch
import torch.nn.functional as F
from torch import nn


def schedule(t, delta):
    """The forward process' schedule at steps t, eq. (B1).

    Args:
        t: int64 tensor of any shape, steps in 0..T (t = 0: no step taken yet).
        delta: float, the per-step flip probability, 0 < delta <= 1/2.
    Returns:
        (p_replaced, p_same): two float64 tensors of t's shape,
            p_replaced = 1 - (1 - 2 delta)^t, the probability that the pixel has been replaced by
                a fresh fair coin at least once in steps 1..t (0 at t = 0);
            p_same = P(Y_t[j] = Y_0[j]) = (1 + (1 - 2 delta)^t) / 2 (1 at t = 0, -> 1/2 as t grows).
    """
    # TODO: eq. (B1). A pixel survives one step unreplaced with probability 1 - 2 delta,
    # and t steps independently. Compute in float64 (t.to(torch.float64)).
    raise NotImplementedError("schedule: implement eq. (B1); see the docstring")


def logits_to_probs(logits):
    """The model's probabilities from its raw outputs, eq. (B4).

    Args:
        logits: tensor of any shape, real numbers in (-inf, inf).
    Returns:
        tensor of the same shape, values in [0, 1]: the probability that the pixel is +1
        (sigmoid(logits) = 1 / (1 + exp(-logits))). Must not be NaN for logits of +-1e4.
    """
    # TODO: which activation maps (-inf, inf) onto a probability in [0, 1]? (written question 8c)
    raise NotImplementedError("logits_to_probs: implement eq. (B4); see the docstring")


def to_unit_range(y):
    """Map {-1, +1} images to {0, 1} (for saving them as pictures)."""
    return (y + 1.0) / 2.0


def binarize(images):
    """Map images in [-1, 1] to {-1, +1}: +1 where the pixel is > 0 (same dtype)."""
    return torch.where(images > 0, 1.0, -1.0).to(images.dtype)


class BinaryDiffusion(nn.Module):
    """Bit-flip diffusion around a model that predicts the clean image's pixels.

    Args:
        model: module called as model(y_t, t) with y_t (B, C, H, W) in {-1, +1} (float) and
            t (B,) int64 in [1, T]; returns logits (B, C, H, W) of P(Y_0[j] = +1 | Y_t), eq. (B4).
        image_size: H = W of the images.
        channels: C of the images.
        timesteps: T, the number of diffusion steps (>= 1).
        delta: flip probability per step, 0 < delta <= 1/2.

    Buffers (float32, shape (T + 1,), indexed by the step t = 0..T, computed in float64):
        p_replaced[t] = 1 - (1 - 2 delta)^t,   p_same[t] = P(Y_t[j] = Y_0[j])   -- eq. (B1)
    """

    def __init__(self, model, *, image_size, channels=1, timesteps=50, delta=0.03):
        super().__init__()
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        if not 0.0 < float(delta) <= 0.5:
            raise ValueError(f"delta must be in (0, 0.5], got {delta}")
        self.model = model
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.num_timesteps = int(timesteps)
        self.delta = float(delta)
        steps = torch.arange(self.num_timesteps + 1, dtype=torch.int64)
        p_replaced, p_same = schedule(steps, self.delta)
        self.register_buffer("p_replaced", torch.as_tensor(p_replaced).to(torch.float32))
        self.register_buffer("p_same", torch.as_tensor(p_same).to(torch.float32))

    def uniform_like(self, shape, device):
        """Uniform [0, 1) numbers of `shape` on `device`: the one place this class draws randomness."""
        return torch.rand(shape, device=device)

    def q_sample(self, y_0, t, u_replace, u_coin):
        """Sample Y_t given Y_0 in one shot, eq. (B2) (written question 8b): no loop over steps.

        Pixel j is replaced where u_replace[j] < p_replaced[t]; a replaced pixel becomes +1
        where u_coin[j] < 1/2 and -1 otherwise; every other pixel keeps its value y_0[j].

        Args:
            y_0: (B, C, H, W) clean images in {-1, +1} (float).
            t: (B,) int64 steps in [1, T].
            u_replace, u_coin: (B, C, H, W) uniform [0, 1) numbers (use them; draw none yourself).
        Returns:
            (B, C, H, W) images Y_t in {-1, +1}, y_0's dtype.
        """
        # TODO: eq. (B2). self.p_replaced[t].reshape(-1, 1, 1, 1) broadcasts against y_0;
        # torch.where(condition, a, b) picks a where condition holds.
        raise NotImplementedError("q_sample: implement eq. (B2); see the docstring")

    def q_posterior(self, y_t, y_0, t):
        """P(Y_{t-1}[j] = +1 | Y_t = y_t, Y_0 = y_0), eq. (B3) (written question 8d), for x = +1 and -1.

        Prior: P(Y_{t-1}[j] = +1 | Y_0[j]) from self.p_same at step t - 1. Likelihood: one more
        step flips the pixel with probability delta. Then Bayes' rule.

        Args:
            y_t: (B, C, H, W) images at step t, in {-1, +1}.
            y_0: (B, C, H, W) clean images in {-1, +1} (each pixel may be either sign).
            t: (B,) int64 steps in [1, T].
        Returns:
            (B, C, H, W) probabilities in [0, 1]. At t = 1 they are exactly 1 where y_0 = +1
            and 0 where y_0 = -1 (Y_0 is known).
        """
        # TODO: eq. (B3). rho from self.p_same[t - 1].reshape(-1, 1, 1, 1), chosen per pixel by
        # the sign of y_0 (torch.where); the likelihoods from the sign of y_t and self.delta.
        raise NotImplementedError("q_posterior: implement eq. (B3); see the docstring")

    def reverse_probs(self, logits, y_t, t):
        """The model's reverse step Q_t(Y_t) = P_model(Y_{t-1}[j] = +1 | Y_t), eq. (B4).

        Mixes the two posteriors (B3) with the model's belief about the clean pixel:
        x0_hat a + (1 - x0_hat) b, where x0_hat = logits_to_probs(logits),
        a = self.q_posterior(y_t, +1, t) and b = self.q_posterior(y_t, -1, t).

        Args:
            logits: (B, C, H, W) the model's outputs at (y_t, t).
            y_t: (B, C, H, W) images at step t, in {-1, +1}.
            t: (B,) int64 steps in [1, T].
        Returns:
            (B, C, H, W) probabilities in [0, 1].
        """
        # TODO: eq. (B4): logits_to_probs, then call self.q_posterior twice with
        # y_0 = torch.ones_like(y_t) and y_0 = -torch.ones_like(y_t).
        raise NotImplementedError("reverse_probs: implement eq. (B4); see the docstring")

    def p_loss(self, y_0, t, u_replace, u_coin):
        """Training loss for given images, steps and uniforms, eq. (B5) (written question 8e).

        Y_t = self.q_sample(y_0, t, u_replace, u_coin), logits = self.model(Y_t, t) (called once),
        P = self.q_posterior(Y_t, y_0, t), and with Q = Q_t(Y_t) of eq. (B4):
            KL(Bern(P) || Bern(Q)) = P log(P / Q) + (1 - P) log((1 - P) / (1 - Q)),
        summed over the pixels of each image and averaged over the batch. Terms with P = 0 or
        P = 1 are 0 (0 log 0 = 0). Work in log space: log Q and log(1 - Q) from F.logsigmoid and
        torch.logaddexp, never the log of a probability that may have rounded to 0.

        Args:
            y_0: (B, C, H, W) clean images in {-1, +1}.
            t: (B,) int64 steps in [1, T].
            u_replace, u_coin: (B, C, H, W) uniforms for q_sample.
        Returns:
            Scalar tensor >= 0, finite for any finite logits.
        """
        # TODO: eq. (B5). After q_sample and the model: a, b (reverse_probs' two posteriors)
        # and the target P; log Q = logaddexp(logsigmoid(logits) + log a,
        # logsigmoid(-logits) + log b), likewise log(1 - Q) with log1p(-a), log1p(-b);
        # torch.xlogy(p, p) is p log p with 0 log 0 = 0. Sum over (C, H, W), mean over B.
        raise NotImplementedError("p_loss: implement eq. (B5); see the docstring")

    def forward(self, y_0):
        """Loss on a batch, with one step drawn uniformly per example.

        Args:
            y_0: (B, C, H, W) clean images in {-1, +1}, with C == self.channels and
                H == W == self.image_size.
        Returns:
            Scalar loss p_loss(y_0, t, u_replace, u_coin), t (B,) int64 uniform on {1, ..., T}
            drawn independently per example, and the two uniforms drawn with self.uniform_like.
        Raises:
            ValueError: if y_0 does not have shape (B, channels, image_size, image_size).
        """
        expected = (self.channels, self.image_size, self.image_size)
        if y_0.dim() != 4 or tuple(y_0.shape[1:]) != expected:
            raise ValueError(
                f"BinaryDiffusion expects images of shape (B, {', '.join(map(str, expected))}); "
                f"got {tuple(y_0.shape)}. Check --image_size and the dataset's channels.")
        # TODO: t (B,) uniform on {1, ..., T}, one per example (torch.randint; mind its
        # exclusive upper end), two uniforms from self.uniform_like, then self.p_loss.
        raise NotImplementedError("forward: draw t and the uniforms, then call p_loss")

    @torch.no_grad()
    def p_sample(self, y_t, t, u=None):
        """One reverse step: sample Y_{t-1} ~ Bernoulli(Q_t(Y_t)), eq. (B6).

        Q = self.reverse_probs(self.model(y_t, t), y_t, t); pixel j of Y_{t-1} is +1 where
        u[j] < Q[j] and -1 otherwise.

        Args:
            y_t: (B, C, H, W) images at step t, in {-1, +1}.
            t: (B,) int64 tensor filled with the step t in [1, T].
            u: optional (B, C, H, W) uniforms; drawn with self.uniform_like when None.
        Returns:
            (B, C, H, W) images Y_{t-1} in {-1, +1}, y_t's dtype (samples, not probabilities).
        """
        # TODO: eq. (B6) with self.model and self.reverse_probs; draw u with
        # self.uniform_like(y_t.shape, y_t.device) when it is None.
        raise NotImplementedError("p_sample: implement one reverse step; see the docstring")

    @torch.no_grad()
    def p_sample_loop(self, y_T, return_chain=False):
        """Run the reverse process from y_T through t = T, T-1, ..., 1 (written question 8f).

        Args:
            y_T: (B, C, H, W) starting images in {-1, +1} (usually fair coins).
            return_chain: also return every intermediate state.
        Returns:
            (B, C, H, W) images Y_0 in {-1, +1}; or, with return_chain, (T + 1, B, C, H, W):
            Y_T, Y_{T-1}, ..., Y_0 in this order (entry k is Y_{T-k}; the last is the result).
        """
        # TODO: loop step = T, ..., 1 with t = torch.full((B,), step, dtype=torch.long,
        # device=y_T.device), calling self.p_sample(y, t). With return_chain, torch.stack
        # the start and every state: (T + 1, B, C, H, W).
        raise NotImplementedError("p_sample_loop: implement the sampling loop; see the docstring")

    @torch.no_grad()
    def sample(self, batch_size):
        """Generate `batch_size` images (B, C, H, W) with values in {0, 1}, on the model's device.

        Y_T: fair coins, +1 where u < 1/2 for u = self.uniform_like(...); then
        self.p_sample_loop(Y_T); the result is mapped from {-1, +1} to {0, 1} (to_unit_range).
        """
        # TODO: Y_T from self.uniform_like(shape, device) on the model's device
        # (next(self.model.parameters()).device), then p_sample_loop and to_unit_range.
        raise NotImplementedError("sample: draw Y_T and run p_sample_loop")
