"""Talking faces from one real photo: a jaw warp driven by the speech envelope.

The photo is scikit-image's bundled `astronaut` (a frontal portrait, available offline). Speaker
"a" is the photo, speaker "b" its mirror image with another colour cast. Each frame opens the
mouth by `opening` pixels: the jaw below the lip line slides down (cv2.remap, fading out towards
the cheeks and the neck) and the gap is painted as a dark mouth interior, so mouth opening tracks
the audio and a face detector still sees a face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

# Landmarks of the astronaut photo, in its 512x512 pixel space (measured on the image).
PHOTO_SIZE = 512
LIP_LINE = (224.0, 146.0)  # centre of the parting between the lips (x, y)
MOUTH_HALF_WIDTH = 20.0
FACE_BOX = (172.0, 60.0, 276.0, 190.0)  # forehead to chin, ear to ear (x0, y0, x1, y1)
CHIN_Y, NECK_Y = 186.0, 206.0
JAW_X = (176.0, 272.0)  # horizontal extent of the moving jaw
MAX_OPENING = 10.0  # pixels, photo space
_ROI = (160, 130, 290, 215)  # the region the warp can change (x0, y0, x1, y1)
_MOUTH_RGB = np.array([52, 14, 20], np.float32)


@dataclass(frozen=True)
class FaceShot:
    """Where a face photo lands in a frame: uniform scale then translation (photo -> frame)."""

    scale: float
    tx: float
    ty: float

    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0.0, self.tx], [0.0, self.scale, self.ty]], np.float32)

    def point(self, x: float, y: float) -> tuple[float, float]:
        return self.scale * x + self.tx, self.scale * y + self.ty

    def box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0 = self.point(box[0], box[1])
        x1, y1 = self.point(box[2], box[3])
        return round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)


@lru_cache(maxsize=None)
def photo(variant: str) -> np.ndarray:
    """The RGB portrait for a face variant ("a" or "b"), uint8 [512, 512, 3]."""
    from skimage import data

    img = data.astronaut()
    if variant == "a":
        return img
    if variant == "b":
        tinted = img[:, ::-1].astype(np.float32) * np.array([0.92, 1.0, 1.12], np.float32)
        return np.clip(tinted, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown face variant {variant!r}; use 'a' or 'b'")


def landmark_x(variant: str, x: float) -> float:
    """Mirror an x coordinate of the original photo for variant "b"."""
    return PHOTO_SIZE - 1 - x if variant == "b" else x


def mouth_box(variant: str, opening: float) -> tuple[float, float, float, float]:
    """The mouth region in photo space for a given opening (x0, y0, x1, y1)."""
    cx = landmark_x(variant, LIP_LINE[0])
    y = LIP_LINE[1]
    return cx - MOUTH_HALF_WIDTH, y - 8.0, cx + MOUTH_HALF_WIDTH, y + 8.0 + opening


def face_box(variant: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = FACE_BOX
    a, b = landmark_x(variant, x0), landmark_x(variant, x1)
    return min(a, b), y0, max(a, b), y1


@lru_cache(maxsize=8)
def _jaw_weights(variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel share of the jaw drop over the warp ROI, and the ROI's pixel grids."""
    x0, y0, x1, y1 = _ROI
    if variant == "b":
        x0, x1 = PHOTO_SIZE - x1, PHOTO_SIZE - x0
    xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    jx0, jx1 = sorted((landmark_x(variant, JAW_X[0]), landmark_x(variant, JAW_X[1])))
    u = np.clip((xs - jx0) / (jx1 - jx0), 0.0, 1.0)
    wx = np.sin(np.pi * u) ** 2  # 0 at the jaw's sides, 1 under the mouth
    wy = np.where(ys < LIP_LINE[1], 0.0, np.clip((NECK_Y - ys) / (NECK_Y - CHIN_Y), 0.0, 1.0))
    return (wx * wy).astype(np.float32), xs, ys


def open_mouth(variant: str, opening: float) -> np.ndarray:
    """The portrait with its mouth opened by `opening` photo pixels (0 = the photo itself)."""
    img = photo(variant)
    if opening <= 0.05:
        return img
    weight, xs, ys = _jaw_weights(variant)
    map_y = ys - opening * weight
    x0, y0 = int(xs[0, 0]), int(ys[0, 0])
    roi = cv2.remap(img, xs, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # dark interior in the gap the jaw left, an ellipse as wide as the mouth
    cx = landmark_x(variant, LIP_LINE[0])
    half_h = opening / 2.0
    cy = LIP_LINE[1] + half_h
    half_w = MOUTH_HALF_WIDTH * (0.8 + 0.2 * opening / MAX_OPENING)
    r = ((xs - cx) / half_w) ** 2 + ((ys - cy) / max(half_h, 0.5)) ** 2
    alpha = np.clip(1.5 - r, 0.0, 1.0)[..., None]
    roi = (roi.astype(np.float32) * (1 - alpha) + _MOUTH_RGB * alpha).astype(np.uint8)
    out = img.copy()
    out[y0 : y0 + roi.shape[0], x0 : x0 + roi.shape[1]] = roi
    return out


def place(canvas: np.ndarray, face: np.ndarray, shot: FaceShot, region: tuple[int, int]) -> None:
    """Draw `face` into the columns `region` of `canvas` (in place) through the shot transform."""
    c0, c1 = region
    m = shot.matrix()
    m[0, 2] -= c0
    h = canvas.shape[0]
    # mirror the photo beyond its edges rather than leave bars where a close-up overshoots it
    canvas[:, c0:c1] = cv2.warpAffine(
        face, m, (c1 - c0, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def envelope(speech: np.ndarray, sr: int, fps: int = 25) -> np.ndarray:
    """RMS envelope of mono speech per video frame, [n_frames]."""
    hop = sr // fps
    n = len(speech) // hop
    frames = speech[: n * hop].reshape(n, hop)
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))


def openings(env: np.ndarray, ref: float) -> np.ndarray:
    """Mouth opening in photo pixels from an envelope: compressive, smoothed over ~3 frames."""
    o = MAX_OPENING * np.clip(env / max(ref, 1e-6), 0.0, 1.0) ** 0.6
    return np.convolve(o, np.array([0.25, 0.5, 0.25]), mode="same")
