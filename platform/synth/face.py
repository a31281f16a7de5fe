"""Talking faces from one real photo: a jaw warp driven by the speech envelope.

The photo is scikit-image's bundled `astronaut` (a frontal portrait, available offline). Speaker
"a" is the photo, speaker "b" its mirror image with another colour cast. Each frame opens the
mouth by `opening` pixels: the jaw below the lip line slides down (cv2.remap, fading out towards
the cheeks and the neck) and the gap is painted as a dark mouth interior, so mouth opening tracks
the audio and a face detector still sees a face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

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


@cache
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
    x0, y0, x1, y1 = _roi(variant)
    xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
    jx0, jx1 = sorted((landmark_x(variant, JAW_X[0]), landmark_x(variant, JAW_X[1])))
    u = np.clip((xs - jx0) / (jx1 - jx0), 0.0, 1.0)
    wx = np.sin(np.pi * u) ** 2  # 0 at the jaw's sides, 1 under the mouth
    wy = np.where(ys < LIP_LINE[1], 0.0, np.clip((NECK_Y - ys) / (NECK_Y - CHIN_Y), 0.0, 1.0))
    return (wx * wy).astype(np.float32), xs, ys


def _roi(variant: str) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = _ROI
    if variant == "b":
        x0, x1 = PHOTO_SIZE - x1, PHOTO_SIZE - x0
    return x0, y0, x1, y1


def open_mouth(variant: str, opening: float) -> np.ndarray:
    """The warp region of the portrait (see `_roi`) with its mouth opened by `opening` photo
    pixels; uint8 [roi_h, roi_w, 3]."""
    img = photo(variant)
    x0, y0, x1, y1 = _roi(variant)
    if opening <= 0.05:
        return img[y0:y1, x0:x1]
    weight, xs, ys = _jaw_weights(variant)
    map_y = ys - opening * weight
    roi = cv2.remap(img, xs, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # dark interior in the gap the jaw left, an ellipse as wide as the mouth
    cx = landmark_x(variant, LIP_LINE[0])
    half_h = opening / 2.0
    cy = LIP_LINE[1] + half_h
    half_w = MOUTH_HALF_WIDTH * (0.8 + 0.2 * opening / MAX_OPENING)
    r = ((xs - cx) / half_w) ** 2 + ((ys - cy) / max(half_h, 0.5)) ** 2
    alpha = np.clip(1.5 - r, 0.0, 1.0)[..., None]
    return (roi.astype(np.float32) * (1 - alpha) + _MOUTH_RGB * alpha).astype(np.uint8)


@lru_cache(maxsize=8)
def _scaled_photo(variant: str, scale: float, margin: int) -> np.ndarray:
    """The portrait resized once per shot scale, mirrored `margin` pixels beyond its edges so a
    close-up that overshoots the photo shows no bars."""
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(photo(variant), None, fx=scale, fy=scale, interpolation=interp)
    return cv2.copyMakeBorder(img, margin, margin, margin, margin, cv2.BORDER_REFLECT_101)


def render(variant: str, opening: float, shot: FaceShot, size: tuple[int, int]) -> np.ndarray:
    """A (w, h) view of the face through `shot` (integer translation), mouth opened; uint8
    [h, w, 3]. The photo is scaled once per shot scale; per frame only the mouth region is
    warped and scaled, which keeps a frame under a millisecond."""
    w, h = size
    tx, ty = int(round(shot.tx)), int(round(shot.ty))
    side = int(round(PHOTO_SIZE * shot.scale))
    need = max(tx, ty, w - tx - side, h - ty - side, 0)
    margin = 64 * (need // 64 + 1)
    padded = _scaled_photo(variant, shot.scale, margin)
    out = padded[margin - ty : margin - ty + h, margin - tx : margin - tx + w].copy()
    x0, y0, x1, y1 = _roi(variant)
    px0, py0 = int(round(x0 * shot.scale)) + tx, int(round(y0 * shot.scale)) + ty
    pw, ph = int(round((x1 - x0) * shot.scale)), int(round((y1 - y0) * shot.scale))
    roi = cv2.resize(open_mouth(variant, opening), (pw, ph), interpolation=cv2.INTER_LINEAR)
    # paste the clipped part of the mouth region that falls inside the view
    cx0, cy0, cx1, cy1 = max(px0, 0), max(py0, 0), min(px0 + pw, w), min(py0 + ph, h)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0:cy1, cx0:cx1] = roi[cy0 - py0 : cy1 - py0, cx0 - px0 : cx1 - px0]
    return out


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
