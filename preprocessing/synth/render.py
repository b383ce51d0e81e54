"""Rendering of synthetic chest radiographs as grayscale uint8 arrays.

A frontal film is a torso silhouette with dark lung fields, ribs, spine, clavicles and a heart
shadow; findings are drawn on top: cardiomegaly widens the heart shadow, pleural effusion is a
basal opacity with a meniscus, edema a perihilar haze, consolidation a focal opacity, support
devices bright tubes/lines/electrodes, pneumothorax a dark apex without markings. Images are
drawn at a working resolution of at most 320 px wide and resized to the requested size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

WORK_WIDTH = 320
ASPECT = 1.2  # rows / columns, portrait like real CXRs
# Heart half-width as a fraction of image width, without and with cardiomegaly.
HEART_HALF_WIDTH = (0.115, 0.185)


def image_shape(width: int) -> tuple[int, int]:
    """(rows, columns) of a synthetic image of the given width."""
    return int(round(width * ASPECT)), int(width)


def _soft(r: np.ndarray, edge: float = 0.04) -> np.ndarray:
    """1 inside (r < 1), 0 outside, with a smooth edge."""
    return np.clip((1.0 - r) / edge, 0.0, 1.0)


def _ellipse(xx, yy, cx, cy, ax, ay):
    return np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)


def _line(xx, yy, x0, y0, x1, y1, width):
    """Soft mask of a line segment from (x0, y0) to (x1, y1), evaluated in its bounding box.

    ``xx`` is a (1, w) row of x coordinates and ``yy`` a (h, 1) column of y coordinates.
    """
    mask = np.zeros((yy.shape[0], xx.shape[1]), dtype=np.float32)
    cols = np.flatnonzero((xx[0] >= min(x0, x1) - width) & (xx[0] <= max(x0, x1) + width))
    rows = np.flatnonzero((yy[:, 0] >= min(y0, y1) - width) & (yy[:, 0] <= max(y0, y1) + width))
    if len(cols) == 0 or len(rows) == 0:
        return mask
    sub_x = xx[:, cols[0]:cols[-1] + 1]
    sub_y = yy[rows[0]:rows[-1] + 1]
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((sub_x - x0) * dx + (sub_y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    dist = np.hypot(sub_x - (x0 + t * dx), sub_y - (y0 + t * dy))
    mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = np.clip(1.0 - dist / width, 0, 1)
    return mask


def render(findings: dict[str, bool], view: str, seed: int, width: int) -> np.ndarray:
    """Draw one radiograph.

    Args:
        findings: CheXpert finding name -> present.
        view: "AP", "PA" or "LATERAL".
        seed: per-image seed (geometry jitter, texture, noise).
        width: output width in pixels (rows = 1.2 x width).

    Returns:
        uint8 array of shape (rows, width).
    """
    rng = np.random.default_rng(seed)
    out_h, out_w = image_shape(width)
    w = min(width, WORK_WIDTH)
    h = int(round(w * ASPECT))
    yy = (np.arange(h, dtype=np.float32) / h)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w)[None, :]
    dx, dy = rng.normal(0, 0.015, 2)
    scale = rng.uniform(0.95, 1.05)
    xx = (xx - 0.5 - dx) / scale + 0.5
    yy = (yy - 0.5 - dy) / scale + 0.5
    img = np.full((h, w), 14.0, dtype=np.float32)
    img += 85 * _soft(_ellipse(xx, yy, 0.5, 0.62, 0.47, 0.62), 0.05)
    coarse = rng.normal(0, 1, (20, 16)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))

    if view == "LATERAL":
        lung = _soft(_ellipse(xx, yy, 0.5, 0.45, 0.26, 0.3), 0.06)
        img -= 55 * lung
        img += 55 * _soft(_ellipse(xx, yy, 0.38, 0.62, 0.13, 0.14), 0.08)
        img += 60 * np.exp(-(((xx - 0.78) / 0.04) ** 2))
    else:
        lungs = np.zeros_like(img)
        for cx, ax in ((0.32, 0.15), (0.68, 0.14)):
            dome = 0.70 - 0.06 * np.abs(xx - cx) / ax
            lung = _soft(_ellipse(xx, yy, cx, 0.45, ax, 0.30), 0.05)
            lung *= np.clip((dome - yy) / 0.02, 0, 1)
            lungs = np.maximum(lungs, lung)
        ribs = (np.sin(2 * np.pi * (yy * 10.5 + 2.2 * (xx - 0.5) ** 2)) > 0.55).astype(np.float32)
        markings = 7 * texture + 22 * ribs
        img += lungs * (-62 + markings)
        img += 70 * np.exp(-(((xx - 0.5) / 0.028) ** 2)) * (yy > 0.06)
        img -= 22 * _line(xx, yy, 0.5, 0.04, 0.5, 0.34, 0.012)
        for side in (-1, 1):
            img += 45 * _line(xx, yy, 0.5 + side * 0.06, 0.14, 0.5 + side * 0.33, 0.10, 0.012)
        half_width = HEART_HALF_WIDTH[bool(findings.get("Cardiomegaly"))] + rng.normal(0, 0.008)
        heart = _soft(_ellipse(xx, yy, 0.54, 0.61, half_width, 0.13), 0.15)
        img += 58 * heart * np.maximum(lungs, 0.3)
        if findings.get("Enlarged Cardiomediastinum"):
            img += 30 * _soft(_ellipse(xx, yy, 0.5, 0.32, 0.08, 0.16), 0.3)
        if findings.get("Pleural Effusion"):
            side = 0.32 if rng.random() < 0.5 else 0.68
            level = rng.uniform(0.56, 0.62)
            meniscus = level - 0.07 * np.abs(xx - side) / 0.15
            img += 58 * lungs * np.clip((yy - meniscus) / 0.03, 0, 1) * (np.abs(xx - side) < 0.2)
        if findings.get("Edema"):
            for cx in (0.38, 0.62):
                img += 38 * lungs * np.exp(-((xx - cx) ** 2 / 0.012 + (yy - 0.46) ** 2 / 0.03))
            img += 10 * lungs
        if findings.get("Consolidation") or findings.get("Pneumonia"):
            cx = rng.choice([0.30, 0.70]) + rng.normal(0, 0.03)
            cy = rng.uniform(0.35, 0.6)
            sigma = rng.uniform(0.05, 0.08)
            img += 55 * lungs * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        if findings.get("Atelectasis"):
            cx = rng.choice([0.32, 0.68])
            img += 35 * lungs * _line(xx, yy, cx - 0.08, 0.6, cx + 0.08, 0.62, 0.012)
        if findings.get("Lung Lesion"):
            cx, cy = rng.choice([0.3, 0.7]), rng.uniform(0.3, 0.55)
            img += 50 * _soft(_ellipse(xx, yy, cx, cy, 0.022, 0.022 / ASPECT), 0.3)
        if findings.get("Pneumothorax"):
            cx = rng.choice([0.28, 0.72])
            apex = _soft(_ellipse(xx, yy, cx, 0.24, 0.1, 0.1), 0.05) * lungs
            img -= apex * (markings + 18)
            edge = np.abs(_ellipse(xx, yy, cx, 0.24, 0.1, 0.1) - 1)
            img += 40 * lungs * np.clip(1 - edge / 0.04, 0, 1)  # the visible pleural line
        if findings.get("Support Devices"):
            img += 120 * _line(xx, yy, 0.5, 0.0, 0.5, 0.31, 0.007)
            img += 110 * _line(xx, yy, 0.47, 0.0, 0.46, 0.92, 0.005)
            img += 110 * _line(xx, yy, 0.24, 0.14, 0.47, 0.36, 0.005)
            for ex, ey in ((0.2, 0.2), (0.8, 0.2), (0.72, 0.78)):
                img += 130 * _soft(_ellipse(xx, yy, ex, ey, 0.015, 0.015 / ASPECT), 0.3)

    img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 5)
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(0.8)
    )
    noisy = np.asarray(picture, dtype=np.int16) + rng.integers(-4, 5, (h, w), dtype=np.int16)
    picture = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if (out_w, out_h) != (w, h):
        picture = picture.resize((out_w, out_h), Image.BICUBIC)
    return np.asarray(picture)
