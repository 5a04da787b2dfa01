"""PNG figures of attributions and attention maps (matplotlib's Figure API with the Agg canvas;
no pyplot, so drawing changes no process-wide backend)."""

from __future__ import annotations

from collections.abc import Sequence
import io
import os

from etils import epath
import numpy as np

_MAX_TOKEN_CHARS = 12  # longer words are cut so that every cell of a heat strip stays readable


def save(fig, path: epath.Path) -> None:
  """Writes the figure as PNG via a temporary file, so a reader never sees half an image."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
  tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp.png"
  tmp.write_bytes(buf.getvalue())
  tmp.replace(path)


def _figure(width: float, height: float):
  from matplotlib.figure import Figure

  return Figure(figsize=(width, height), layout="constrained")


def _symmetric(a: np.ndarray) -> float:
  return float(np.abs(a).max()) or 1.0


def image_grid(
    images: np.ndarray,
    integrated: np.ndarray,
    saliency: np.ndarray,
    titles: Sequence[str],
    method_note: str,
):
  """One row per example: the image, its integrated gradients (signed, red for the predicted
  class), |saliency|, and |integrated gradients| over the image. Arrays are [N, H, W] (the
  channels already reduced); images in [0, 1]."""
  n = images.shape[0]
  fig = _figure(10, 2.5 * n + 0.6)
  columns = ("image", "integrated gradients", "|saliency|", "overlay |IG|")
  axes = fig.subplots(n, 4, squeeze=False)
  for i in range(n):
    gray = dict(cmap="gray", vmin=0.0, vmax=1.0)
    bound = _symmetric(integrated[i])
    axes[i, 0].imshow(images[i], **gray)
    axes[i, 1].imshow(integrated[i], cmap="bwr", vmin=-bound, vmax=bound)
    axes[i, 2].imshow(np.abs(saliency[i]), cmap="magma")
    axes[i, 3].imshow(images[i], cmap="gray", vmin=0.0, vmax=2.0)  # dimmed: the heat shows on white
    heat = np.abs(integrated[i]) / bound
    axes[i, 3].imshow(heat, cmap="hot", alpha=np.clip(heat, 0.0, 1.0) * 0.8)
    axes[i, 0].set_ylabel(titles[i], fontsize=9)
    for j, ax in enumerate(axes[i]):
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(columns[j], fontsize=10)
  fig.suptitle(method_note, fontsize=9)
  return fig


def token_strip(tokens: Sequence[str], attributions: np.ndarray, title: str, per_row: int = 16):
  """The tokens in reading order, `per_row` to a row, each cell coloured by its attribution
  (red for the predicted class, blue against it, symmetric scale)."""
  n = len(tokens)
  rows = max(1, -(-n // per_row))
  grid = np.full((rows, per_row), np.nan)
  grid.flat[:n] = attributions
  bound = _symmetric(attributions) if n else 1.0
  fig = _figure(per_row * 0.9, rows * 0.35 + 1.0)
  ax = fig.subplots()
  image = ax.imshow(grid, cmap="bwr", vmin=-bound, vmax=bound, aspect="auto")
  for k, token in enumerate(tokens):
    r, c = divmod(k, per_row)
    ax.text(c, r, _short(token), ha="center", va="center", fontsize=7)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.02, pad=0.01)
  return fig


def _short(token: str) -> str:
  return token if len(token) <= _MAX_TOKEN_CHARS else token[: _MAX_TOKEN_CHARS - 1] + "…"


def attention_maps(weights: np.ndarray, queries: Sequence[str], keys: Sequence[str], title: str):
  """weights [layers, heads, Tq, Tk]: one panel per (layer, head), rows are layers; each row of
  a panel is a query's distribution over the keys."""
  layers, heads = weights.shape[:2]
  size = max(2.0, min(4.0, 0.09 * max(len(queries), len(keys))))
  fig = _figure(size * heads + 0.5, size * layers + 0.8)
  axes = fig.subplots(layers, heads, squeeze=False)
  ticks = len(keys) <= 80  # beyond that the labels overlap into a smear
  for layer in range(layers):
    for head in range(heads):
      ax = axes[layer, head]
      ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
      ax.set_title(f"layer {layer} head {head}", fontsize=8)
      if ticks:
        ax.set_xticks(range(len(keys)), keys, fontsize=5, rotation=90)
        ax.set_yticks(range(len(queries)), queries, fontsize=5)
      else:
        ax.set_xticks([])
        ax.set_yticks([])
  fig.suptitle(title, fontsize=10)
  return fig
