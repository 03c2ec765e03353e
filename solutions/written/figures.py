"""The written part's figures, drawn by code: they are answers, so they appear in the key only.

`python -m release.written` calls draw_all(folder); each figure is a PDF that pdflatex embeds.
The PDFs carry no creation date, so two builds are byte-identical.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle  # noqa: E402

NODE_R = 0.32


def _canvas(width, height, xlim, ylim):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _node(ax, xy, label, shaded=False):
    ax.add_patch(Circle(xy, NODE_R, facecolor="0.82" if shaded else "white", edgecolor="black",
                        linewidth=1.2, zorder=3))
    ax.text(*xy, label, ha="center", va="center", fontsize=13, zorder=4)


def _arrow(ax, start, end, rad=0.0, shrink=NODE_R * 72 * 0.75, style="-|>", color="black"):
    # shrink is in points: stop at the node's rim (1 data unit ~ 72 * 0.75 pt at these sizes).
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12,
                                 connectionstyle=f"arc3,rad={rad}", shrinkA=shrink,
                                 shrinkB=shrink, linewidth=1.0, color=color, zorder=2))


def decoder_only_dag(path, n=4):
    """Directed graphical model of a decoder-only transformer LM over w_1..w_n: every earlier
    word is a parent of every later one (the chain rule with no independence assumed)."""
    fig, ax = _canvas(6.0, 2.2, (-0.6, 1.6 * (n - 1) + 0.6), (-0.6, 2.3))
    pos = [(1.6 * k, 0.0) for k in range(n)]
    for k, xy in enumerate(pos):
        _node(ax, xy, f"$w_{k + 1}$")
    for i in range(n):
        for j in range(i + 1, n):
            rad = 0.0 if j == i + 1 else -0.28 - 0.08 * (j - i)
            _arrow(ax, pos[i], pos[j], rad=rad)
    fig.savefig(path, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


def crf_factor_graph(path, n=3):
    """Factor graph of p(t_1..t_n | w_1..w_n) = prod_n psi_n(t_n, w_1..w_n) / Z(w): one factor
    per tag, joined to its tag and to every word (h_n depends on the whole sentence)."""
    fig, ax = _canvas(6.0, 3.2, (-0.7, 2.2 * (n - 1) + 0.7), (-0.7, 3.4))
    words = [(2.2 * k, 2.8) for k in range(n)]
    tags = [(2.2 * k, 0.0) for k in range(n)]
    factors = [(2.2 * k, 1.25) for k in range(n)]
    for k in range(n):
        fx, fy = factors[k]
        for wx, wy in words:
            ax.plot([fx, wx], [fy, wy - NODE_R], color="0.35", linewidth=0.9, zorder=1)
        ax.plot([fx, tags[k][0]], [fy, tags[k][1] + NODE_R], color="black", linewidth=1.1,
                zorder=1)
        ax.add_patch(Rectangle((fx - 0.17, fy - 0.17), 0.34, 0.34, facecolor="black", zorder=3))
        ax.text(fx + 0.3, fy, f"$\\psi_{k + 1}$", ha="left", va="center", fontsize=12)
        _node(ax, words[k], f"$w_{k + 1}$", shaded=True)
        _node(ax, tags[k], f"$t_{k + 1}$")
    fig.savefig(path, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


def _box(ax, xy, w, h, text, color="white"):
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05",
                                facecolor=color, edgecolor="black", linewidth=1.2, zorder=3))
    ax.text(x, y, text, ha="center", va="center", fontsize=11, zorder=4)


def vae_block_diagram(path):
    """Training-time VAE: encoder -> (mu, sigma) -> z = mu + sigma * eps -> decoder -> x_hat,
    with the two loss terms."""
    fig, ax = _canvas(8.0, 3.0, (-0.8, 13.2), (-2.2, 2.6))
    _box(ax, (0.0, 0.0), 1.2, 0.9, "$x$", "0.88")
    _box(ax, (2.6, 0.0), 2.2, 1.3, "encoder\n$q_\\phi(z\\mid x)$")
    _box(ax, (5.4, 0.75), 1.3, 0.7, "$\\mu_\\phi(x)$")
    _box(ax, (5.4, -0.75), 1.3, 0.7, "$\\sigma_\\phi(x)$")
    _box(ax, (7.9, 0.0), 2.0, 0.9, "$z=\\mu+\\sigma\\odot\\varepsilon$")
    _box(ax, (7.9, 2.0), 1.8, 0.6, "$\\varepsilon\\sim\\mathcal{N}(0,I)$", "0.93")
    _box(ax, (10.5, 0.0), 2.0, 1.3, "decoder\n$p_\\theta(x\\mid z)$")
    _box(ax, (12.6, 0.0), 1.0, 0.9, "$\\hat{x}$", "0.88")
    kw = {"shrink": 0}
    _arrow(ax, (0.65, 0.0), (1.45, 0.0), **kw)
    _arrow(ax, (3.75, 0.25), (4.7, 0.7), **kw)
    _arrow(ax, (3.75, -0.25), (4.7, -0.7), **kw)
    _arrow(ax, (6.1, 0.7), (6.85, 0.2), **kw)
    _arrow(ax, (6.1, -0.7), (6.85, -0.2), **kw)
    _arrow(ax, (7.9, 1.65), (7.9, 0.5), **kw)
    _arrow(ax, (8.95, 0.0), (9.45, 0.0), **kw)
    _arrow(ax, (11.55, 0.0), (12.05, 0.0), **kw)
    ax.text(5.4, -1.75, "$D_{KL}(q_\\phi(z\\mid x)\\,\\|\\,\\mathcal{N}(0,I))$",
            ha="center", fontsize=10)
    ax.text(10.5, -1.75, "reconstruction: $-\\log p_\\theta(x\\mid z)$", ha="center",
            fontsize=10)
    ax.text(7.9, -2.15, "loss = reconstruction + KL (the negative ELBO)", ha="center",
            fontsize=10, style="italic")
    fig.savefig(path, bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


FIGURES = {
    "fig-decoder-dag.pdf": decoder_only_dag,
    "fig-crf-factor-graph.pdf": crf_factor_graph,
    "fig-vae.pdf": vae_block_diagram,
}


def draw_all(folder):
    """Write every figure into `folder`; return their paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in FIGURES.items():
        draw(folder / name)
        paths.append(folder / name)
    return paths
