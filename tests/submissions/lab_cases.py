"""Part 3 (the notebook lab): the catalogue that proves its grading right.

Every case is a notebook derived from the master, solutions/lab.ipynb, by the functions below;
tests/test_lab.py grades each with the real engine:

- MUTANTS: plausible bugs, exact text substitutions in one graded function. Each must lose
  exactly the tests in `loses` (ids of tests_hidden/lab/tests.py); the tests of `also`, questions
  whose functions call the mutated one, must still pass (the grader isolates them with stand-ins).
- ALTERNATE: a correct lab written differently (float32 throughout, helpers inlined, noise drawn
  in bulk): full marks.
- FORGERY: the Otter-style attack (a cell that reads the hidden tests Otter copies beside the
  notebook and patches Otter's test runner to pass everything) on the blank student notebook: 0.
- LOOP_CELL: a cell that never ends, on the blank student notebook: 0, quickly; LOOP_FUNCTION: a
  graded function that never returns, in the reference: only its own test fails.
"""

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MASTER = ROOT / "solutions" / "lab.ipynb"
STUDENT = ROOT / "assignment" / "lab.ipynb"


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str        # the student's misconception, in words
    old: str        # exact text of one code cell of the master, occurring exactly once
    new: str
    loses: tuple    # test ids that must fail
    also: tuple = ()  # questions (q1 ... q9) that call the mutated function and must not lose

    def questions(self):
        return sorted({t.split("_", 1)[0] for t in self.loses} | set(self.also))


def load(path=MASTER):
    return json.loads(Path(path).read_text())


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def mutate(nb, mutant):
    nb = json.loads(json.dumps(nb))
    hits = [c for c in nb["cells"] if c["cell_type"] == "code" and mutant.old in source(c)]
    if len(hits) != 1 or source(hits[0]).count(mutant.old) != 1:
        raise ValueError(f"mutant {mutant.name}: its text must occur exactly once in one code "
                         "cell of the master notebook; update the mutant")
    hits[0]["source"] = source(hits[0]).replace(mutant.old, mutant.new)
    return nb


def with_cell(nb, code, index=None):
    """nb with a code cell added (at the end, or before cell `index`)."""
    nb = json.loads(json.dumps(nb))
    cell = {"cell_type": "code", "execution_count": None, "id": "added", "metadata": {},
            "outputs": [], "source": code}
    nb["cells"].insert(len(nb["cells"]) if index is None else index, cell)
    return nb


def write(nb, path):
    Path(path).write_text(json.dumps(nb, indent=1))
    return Path(path)


MUTANTS = [
    Mutant('mean_no_sqrt',
           'scales by 1 - beta_t instead of its square root',
           'return math.sqrt(1.0 - float(beta_t)) * x_prev',
           'return (1.0 - float(beta_t)) * x_prev',
           ('q1_compute_mean',)),
    Mutant('cov_std',
           'puts the standard deviation sqrt(beta_t) on the diagonal instead of the variance',
           'return float(beta_t) * torch.eye(x_prev.numel()',
           'return math.sqrt(float(beta_t)) * torch.eye(x_prev.numel()',
           ('q1_compute_cov',)),
    Mutant('step_noise_var',
           'multiplies the noise by the variance beta_t instead of sqrt(beta_t)',
           'compute_mean(x_prev, beta_t) + math.sqrt(float(beta_t)) * noise',
           'compute_mean(x_prev, beta_t) + float(beta_t) * noise',
           ('q1_forward_step',)),
    Mutant('cosine_no_clamp',
           'forgets to cap the cosine betas at 0.999 (the last one becomes 1)',
           'return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)',
           'return 1 - abar[1:] / abar[:-1]',
           ('q2_cosine_betas',)),
    Mutant('closed_form_off_by_one',
           'multiplies t + 1 alphas into abar_t',
           'abar = torch.prod(1 - betas.double()[:t]).item()',
           'abar = torch.prod(1 - betas.double()[:t + 1]).item()',
           ('q2_closed_form',)),
    Mutant('pdf_no_norm',
           'uses the 1-D normalizer (2 pi) for every dimension',
           'return torch.exp(-0.5 * ((x - mu) ** 2).sum(-1)) / (2 * math.pi) ** (n / 2)',
           'return torch.exp(-0.5 * ((x - mu) ** 2).sum(-1)) / (2 * math.pi)',
           ('q3_normal_pdf',)),
    Mutant('gndm_wrong_dim',
           'takes the median instead of the mean (the MLE of a Gaussian mean is the mean)',
           'return samples.mean(dim=0)',
           'return samples.median(dim=0).values',
           ('q3_gndm_mean',)),
    Mutant('seq_alpha_no_sqrt',
           'scales z by alpha_t instead of sqrt(alpha_t) at each step',
           'z = math.sqrt(alpha) * z + math.sqrt(1 - alpha) * torch.randn_like(z)',
           'z = alpha * z + math.sqrt(1 - alpha) * torch.randn_like(z)',
           ('q4_noise_sequentially',)),
    Mutant('gap_sum',
           'sums the squared distance instead of averaging it per coordinate',
           'total += ((torch.randn_like(z) - z) ** 2).mean().item()',
           'total += ((torch.randn_like(z) - z) ** 2).sum().item()',
           ('q4_white_gap',)),
    Mutant('gap_last_alpha',
           'takes the last alpha as abar_T instead of the product of all alphas',
           'abar = torch.prod(alphas.double()).item()',
           'abar = alphas[-1].item()',
           ('q4_expected_white_gap',)),
    Mutant('posterior_swapped',
           'swaps the coefficients of x_0 and x_t in the posterior mean',
           'return coef_x0 * x0 + coef_xt * x_t',
           'return coef_xt * x0 + coef_x0 * x_t',
           ('q5_posterior_mean',)),
    Mutant('mean_from_eps_abar',
           'divides by sqrt(abar_t) instead of sqrt(alpha_t) (a slip also found in the source)',
           'return (x_t - beta / math.sqrt(1 - _abar(betas, t)) * eps) / math.sqrt(1 - beta)',
           'return (x_t - beta / math.sqrt(1 - _abar(betas, t)) * eps) / math.sqrt(_abar(betas, t))',
           ('q5_mean_from_eps',), also=('q6',)),
    Mutant('mean_loss_no_half',
           'drops the 1/2 of 1 / (2 sigma^2)',
           'return (diff ** 2).flatten(1).sum(1) / (2 * sigma2)',
           'return (diff ** 2).flatten(1).sum(1) / sigma2',
           ('q5_mean_loss',)),
    Mutant('noise_loss_mean',
           'averages over pixels instead of summing (the squared norm)',
           'return ((eps - eps_theta) ** 2).flatten(1).sum(1)',
           'return ((eps - eps_theta) ** 2).flatten(1).mean(1)',
           ('q5_noise_loss',)),
    Mutant('weight_no_alpha',
           'forgets alpha_t in the denominator of lambda_t',
           'return beta ** 2 / (2 * sigma2 * (1 - beta) * (1 - _abar(betas, t)))',
           'return beta ** 2 / (2 * sigma2 * (1 - _abar(betas, t)))',
           ('q5_noise_loss_weight',)),
    Mutant('reverse_var_not_std',
           'multiplies the noise by the variance tilde-beta_t instead of its square root',
           'sigma = math.sqrt((1 - abar_prev) / (1 - abar) * beta)',
           'sigma = (1 - abar_prev) / (1 - abar) * beta',
           ('q6_reverse_step',), also=('q8',)),
    Mutant('alphas_reversed',
           'lists the alphas in increasing order',
           'return torch.linspace(first, last, T, dtype=torch.float64)',
           'return torch.linspace(last, first, T, dtype=torch.float64)',
           ('q7_linear_alphas',)),
    Mutant('q_sample_index',
           'indexes abar with t - 2 (a 0-based t, shifted twice)',
           'abar = torch.cumprod(alphas.double(), 0)[t - 1]',
           'abar = torch.cumprod(alphas.double(), 0)[(t - 2).clamp(min=0)]',
           ('q7_q_sample',), also=('q9',)),
    Mutant('sample_ascending',
           'runs the reverse steps t = 1, ..., T',
           'for t in range(len(alphas), 0, -1):',
           'for t in range(1, len(alphas) + 1):',
           ('q8_sample_steps',)),
    Mutant('sample_reuse_noise',
           'draws one noise tensor and reuses it at every step',
           '    x = torch.randn(m, *image_shape)\n    for t in range(len(alphas), 0, -1):\n        eps = eps_model(x, torch.full((m,), t, dtype=torch.long))\n        x = reverse_step(x, eps, t, betas, torch.randn_like(x))',
           '    x = torch.randn(m, *image_shape)\n    z = torch.randn_like(x)\n    for t in range(len(alphas), 0, -1):\n        eps = eps_model(x, torch.full((m,), t, dtype=torch.long))\n        x = reverse_step(x, eps, t, betas, z)',
           ('q8_sample_steps', 'q8_sample_noise')),
    Mutant('loss_vs_x0',
           'compares the predicted noise with x0 instead of the noise',
           'return F.mse_loss(eps_model(noisy, t), noise)',
           'return F.mse_loss(eps_model(noisy, t), x0)',
           ('q9_training_loss',)),
]

ALTERNATE = r'''import torch as th
import numpy


def compute_mean(x_prev, beta_t):
    return x_prev * (1 - th.as_tensor(beta_t, dtype=x_prev.dtype)).sqrt()


def compute_cov(x_prev, beta_t):
    return th.diag(th.full((x_prev.numel(),), float(beta_t), dtype=x_prev.dtype))


def forward_step(x_prev, beta_t, noise):
    b = th.as_tensor(beta_t, dtype=th.float32)
    return (1 - b).sqrt() * x_prev + b.sqrt() * noise


def linear_betas(T, beta_1=1e-4, beta_T=0.02):
    return th.tensor(numpy.linspace(beta_1, beta_T, T), dtype=th.float32)


def cosine_betas(T, s=0.008, max_beta=0.999):
    out = []
    f = lambda t: numpy.cos((t / T + s) / (1 + s) * numpy.pi / 2) ** 2
    for t in range(1, T + 1):
        out.append(min(1 - f(t) / f(t - 1), max_beta))
    return th.tensor(out, dtype=th.float32)


def closed_form(x0, betas, t):
    alphas = (1 - betas).float()
    abar = th.cumprod(th.cat([th.ones(1), alphas]), 0)[t]
    return abar.sqrt() * x0, float(1 - abar)


def normal_pdf(x, mu):
    d2 = th.cdist(x.float(), mu.float().unsqueeze(0)).squeeze(1) ** 2
    return th.exp(-d2 / 2 - x.shape[1] / 2 * numpy.log(2 * numpy.pi))


def gndm_mean(samples):
    return samples.sum(0) / len(samples)


def noise_sequentially(x, alphas):
    eps = th.randn(len(alphas), *x.shape)
    z = x.clone()
    for a, e in zip(alphas.float(), eps):
        z = a.sqrt() * z + (1 - a).sqrt() * e
    return z


def white_gap(z, num_samples):
    eps = th.randn(num_samples, *z.shape)
    return float(((eps - z) ** 2).mean())


def expected_white_gap(x, alphas):
    abar = th.cumprod(alphas.float(), 0)[-1]
    return float(abar * (x ** 2).mean() + 2 - abar)


def _coefs(betas, t):
    betas = betas.float()
    alphas = 1 - betas
    abar = th.cumprod(alphas, 0)
    abar_prev = th.cat([th.ones(1), abar[:-1]])
    return betas[t - 1], alphas[t - 1], abar[t - 1], abar_prev[t - 1]


def posterior_mean(x_t, x0, t, betas):
    b, a, ab, abp = _coefs(betas, t)
    return (abp.sqrt() * b * x0 + a.sqrt() * (1 - abp) * x_t) / (1 - ab)


def mean_from_eps(x_t, eps, t, betas):
    b, a, ab, abp = _coefs(betas, t)
    return 1 / a.sqrt() * x_t - b / ((1 - ab).sqrt() * a.sqrt()) * eps


def mean_loss(mu_theta, x_t, x0, t, betas, sigma2):
    b, a, ab, abp = _coefs(betas, t)
    target = (abp.sqrt() * b * x0 + a.sqrt() * (1 - abp) * x_t) / (1 - ab)
    return 0.5 / sigma2 * ((target - mu_theta) ** 2).reshape(len(x_t), -1).sum(-1)


def noise_loss(eps_theta, eps):
    return ((eps_theta - eps) ** 2).sum(dim=tuple(range(1, eps.dim())))


def noise_loss_weight(t, betas, sigma2):
    b, a, ab, abp = _coefs(betas, t)
    return float(b * b / (2 * sigma2 * a * (1 - ab)))


def reverse_step(x_t, eps_pred, t, betas, noise):
    b, a, ab, abp = _coefs(betas, t)
    mean = (x_t - b / (1 - ab).sqrt() * eps_pred) / a.sqrt()
    var = b * (1 - abp) / (1 - ab)
    return mean + var.sqrt() * noise


def linear_alphas(T=500, first=0.9999, last=0.98):
    return first + (last - first) * th.arange(T, dtype=th.float64) / (T - 1)


def q_sample(x0, t, alphas, noise):
    abar = th.cumprod(alphas.float(), 0)
    a = abar.gather(0, t - 1)[:, None, None, None]
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


@th.no_grad()
def sample(eps_model, m, alphas, image_shape=(1, 32, 32)):
    T = len(alphas)
    alphas = alphas.float()
    abar = th.cumprod(alphas, 0)
    z = th.randn(T + 1, m, *image_shape)
    x = z[0]
    for i in reversed(range(T)):
        t = th.full((m,), i + 1, dtype=th.long)
        eps = eps_model(x, t)
        abar_prev = abar[i - 1] if i > 0 else th.tensor(1.0)
        mean = (x - (1 - alphas[i]) / (1 - abar[i]).sqrt() * eps) / alphas[i].sqrt()
        std = ((1 - abar_prev) / (1 - abar[i]) * (1 - alphas[i])).sqrt()
        x = mean + std * z[i + 1] if i > 0 else mean
    return x


def training_loss(eps_model, x0, t, noise, alphas):
    abar = th.cumprod(alphas.float(), 0)[t - 1].view(-1, 1, 1, 1)
    pred = eps_model(abar.sqrt() * x0 + (1 - abar).sqrt() * noise, t)
    return ((pred - noise) ** 2).mean()
'''


FORGERY = """# Otter runs the checks in this kernel with the hidden tests copied beside the notebook
import glob
import otter.test_files.abstract_test as runner

hidden_tests = {path: open(path).read() for path in glob.glob("tests/*.py")}
runner.TestFile.grade = lambda self, global_env: None
runner.TestFile.passed_all = property(lambda self: True)
runner.TestFile.score = property(lambda self: self.possible)
"""

LOOP_CELL = "while True:  # a cell that never ends\n    pass\n"

LOOP_FUNCTION = Mutant(
    "compute_mean_loops", "a graded function that never returns",
    "return math.sqrt(1.0 - float(beta_t)) * x_prev",
    "while True:\n        pass", ("q1_compute_mean",))
