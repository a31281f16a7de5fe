"""Face and lip crops of a clip: find faces, link them into tracks, pick the active speaker.

Per frame, MediaPipe's 478-point face mesh (video mode, refined lips and eyes) gives landmarks
of up to `max_faces` faces. Faces too small for the mesh's own short-range detector (on the
synthetic corpus it lost faces ~45 px wide in most frames) get a second chance: the full-range
face detector finds them, the mesh runs again on an upscaled square around each, and the next
frame starts from the same squares. Landmarks become per-frame observations (box, lip centre,
mouth angle, inter-ocular distance, mouth opening), linked into tracks by box overlap. With
several tracks the active speaker is the one whose mouth opening follows the speech RMS
envelope best (Pearson correlation over the frames it is seen), the cue behind audio-visual
speaker detection (Chung & Zisserman, "Out of time", ACCV 2016 workshops).

Shape key: f = video frames (25 fps), h/w = frame size, k = landmarks, s = face_size,
l = lip_size, n = audio samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import correlate1d, uniform_filter1d

from dubforge.schema import FPS

# MediaPipe face-mesh landmark indices (canonical face model; the lip set is FACEMESH_LIPS).
# Inner-lip pairs (upper, lower) at the middle and under each nostril: their mean gap is the
# mouth opening, three pairs average out single-landmark jitter.
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))
MOUTH_CORNERS = (61, 291)  # outer corners: their line sets the lip crop's rotation
EYE_CORNERS = (33, 263)  # outer eye corners: a face size that does not move when talking
LIPS = (
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
    185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405,
    409, 415,
)  # fmt: skip

FACE_MARGIN = 1.4  # face crop side / the larger side of the landmark box (adds hair and chin)
LIP_SPAN = 1.4  # lip crop side / inter-ocular distance: the mouth fills about half the width
SMOOTH_FRAMES = 5  # crop geometry is averaged over this many found frames to stop jitter
MESH_MAX_SIDE = 1024  # larger frames are shrunk by an integer factor before the video mesh: the
# mesh crops each face to 192-256 px anyway, and copying a 1080p frame into MediaPipe cost more
# than the mesh itself (small faces are still searched for in the full frame)
RETRY_SIZE = 256  # pixels: small faces are upscaled to this before the mesh runs again
RETRY_STRIDE = 3  # after the full-range detector finds nothing, skip it for this many frames
MATCH_IOU = 0.3  # a face continues a track when its box overlaps the track's last box this much
MAX_GAP = 12  # frames a track may go unseen and still be continued (~0.5 s)
# Lips move slower than the 40 ms RMS envelope flickers (syllables come at ~4-5 Hz), so the
# speaker is scored against the envelope smoothed over ~3 frames; on the synthetic corpus this
# raised the true speaker's correlation from 0.64-0.94 to 0.80-0.97.
ENVELOPE_TAPS = (0.25, 0.5, 0.25)


Square = tuple[float, float, float]  # centre x, centre y, side, frame pixels


@dataclass(frozen=True)
class FaceTrack:
    """The chosen face of one clip, every array with one entry per video frame."""

    face: np.ndarray  # uint8 [f, s, s, 3] RGB square crops
    lips: np.ndarray  # uint8 [f, l, l] grayscale mouth crops, mouth corners level
    coverage: float  # fraction of frames in which the chosen face was found
    n_faces: int  # face tracks seen in the clip
    speaker_score: float  # correlation of the chosen mouth opening with the smoothed envelope
    boxes: np.ndarray  # float32 [f, 4] x0, y0, x1, y1 in frame pixels; NaN where not found
    mouth_open: np.ndarray  # float32 [f] inner-lip gap / inter-ocular; NaN where not found

    @property
    def found(self) -> np.ndarray:
        """bool [f]: frames in which the chosen face was detected."""
        return ~np.isnan(self.boxes[:, 0])


@dataclass(frozen=True)
class _Face:
    """One face in one frame, measured from its landmarks (frame pixels)."""

    box: np.ndarray  # [4] x0, y0, x1, y1 of all landmarks
    lip_centre: np.ndarray  # [2] mean of the 40 lip landmarks
    angle: float  # degrees, mouth-corner line against the image x axis (y down)
    iod: float  # inter-ocular distance
    mouth_open: float  # mean inner-lip gap / iod


def _measure(pts: np.ndarray) -> _Face:
    """Observation from landmarks pts [k, 2] in frame pixels."""
    iod = max(float(np.linalg.norm(pts[EYE_CORNERS[1]] - pts[EYE_CORNERS[0]])), 1e-3)
    upper = pts[[u for u, _ in INNER_LIP_PAIRS]]  # [3, 2]
    lower = pts[[d for _, d in INNER_LIP_PAIRS]]
    gap = float(np.linalg.norm(lower - upper, axis=1).mean())
    dx, dy = pts[MOUTH_CORNERS[1]] - pts[MOUTH_CORNERS[0]]
    return _Face(
        box=np.concatenate([pts.min(axis=0), pts.max(axis=0)]),
        lip_centre=pts[list(LIPS)].mean(axis=0),
        angle=math.degrees(math.atan2(dy, dx)),
        iod=iod,
        mouth_open=gap / iod,
    )


def _square_around(pts: np.ndarray) -> Square:
    """The square twice the size of the landmarks' box [k, 2], on its centre."""
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    return (x0 + x1) / 2, (y0 + y1) / 2, 2.0 * max(x1 - x0, y1 - y0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _dedupe(faces: list[_Face]) -> list[_Face]:
    """Drop a face that mostly overlaps one kept before it (two small-face squares that overlap
    can both find the same face)."""
    kept: list[_Face] = []
    for face in faces:
        if all(_iou(face.box, k.box) < 0.5 for k in kept):
            kept.append(face)
    return kept


def _link_tracks(per_frame: list[list[_Face]]) -> list[dict[int, _Face]]:
    """Tracks (frame index -> face) from per-frame faces: greedy matching on box overlap with
    each track's last box, best overlaps first; a face that matches nothing starts a track."""
    tracks: list[dict[int, _Face]] = []
    last: list[int] = []  # frame each track was last seen in
    for f, faces in enumerate(per_frame):
        live = [t for t in range(len(tracks)) if f - last[t] <= MAX_GAP]
        pairs = []
        for i, face in enumerate(faces):
            for t in live:
                iou = _iou(face.box, tracks[t][last[t]].box)
                if iou >= MATCH_IOU:
                    pairs.append((iou, i, t))
        taken_faces: set[int] = set()
        taken_tracks: set[int] = set()
        for _, i, t in sorted(pairs, reverse=True):
            if i not in taken_faces and t not in taken_tracks:
                tracks[t][f] = faces[i]
                last[t] = f
                taken_faces.add(i)
                taken_tracks.add(t)
        for i, face in enumerate(faces):
            if i not in taken_faces:
                tracks.append({f: face})
                last.append(f)
    return tracks


def speech_envelope(speech: np.ndarray, sample_rate: int, n_frames: int) -> np.ndarray:
    """RMS of mono speech per 40 ms video frame, float64 [n_frames]; frames past the end of the
    audio are 0. Frame k covers samples [round(k sr / 25), round((k + 1) sr / 25))."""
    x = np.asarray(speech, dtype=np.float64)
    energy = np.concatenate([[0.0], np.cumsum(x * x)])  # [n + 1], prefix sums of squares
    edges = np.minimum(np.round(np.arange(n_frames + 1) * sample_rate / FPS).astype(int), len(x))
    count = np.maximum(np.diff(edges), 1)
    return np.sqrt(np.maximum(np.diff(energy[edges]), 0.0) / count)


def lip_envelope(env: np.ndarray) -> np.ndarray:
    """The RMS envelope [f] smoothed to the pace of lip movement (see ENVELOPE_TAPS)."""
    if len(env) == 0:
        return env
    return correlate1d(env, np.array(ENVELOPE_TAPS), mode="nearest")


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is (nearly) constant or too short to tell."""
    if len(a) < 3:
        return 0.0
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else 0.0


def _pick_speaker(
    tracks: list[dict[int, _Face]], env: np.ndarray
) -> tuple[dict[int, _Face] | None, float]:
    """The track whose mouth opening follows the envelope best, among the tracks seen at least
    half as long as the longest (a few stray frames can correlate by chance); with no
    correlation anywhere (silence, narration over still faces) the longest, largest track."""
    if not tracks:
        return None, 0.0
    longest = max(len(t) for t in tracks)
    candidates = [t for t in tracks if len(t) >= 0.5 * longest]
    scores = []
    for t in candidates:
        frames = np.fromiter(t.keys(), dtype=int)
        mouth = np.array([face.mouth_open for face in t.values()])
        scores.append(correlation(mouth, env[frames]))
    best = int(np.argmax(scores))
    if scores[best] <= 0.0:
        area = [np.mean([face.box[2] - face.box[0] for face in t.values()]) for t in candidates]
        best = max(range(len(candidates)), key=lambda i: (len(candidates[i]), area[i]))
    return candidates[best], float(scores[best])


def _nearest(found: np.ndarray) -> np.ndarray:
    """For every frame, the position (in found order) of the nearest found frame; [f] int."""
    idx = np.flatnonzero(found)
    right = np.clip(np.searchsorted(idx, np.arange(len(found))), 0, len(idx) - 1)
    left = np.clip(right - 1, 0, len(idx) - 1)
    frames = np.arange(len(found))
    return np.where(np.abs(idx[left] - frames) <= np.abs(idx[right] - frames), left, right)


def crop_square(frame: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """An axis-aligned square of `side` pixels centred on (cx, cy), zero-padded where it leaves
    the frame, resized to [size, size, ...]."""
    h, w = frame.shape[:2]
    s = max(int(round(side)), 1)
    x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
    patch = frame[max(y0, 0) : max(min(y0 + s, h), 0), max(x0, 0) : max(min(x0 + s, w), 0)]
    if patch.shape[0] != s or patch.shape[1] != s:
        if patch.size == 0:  # entirely outside the frame
            return np.zeros((size, size, *frame.shape[2:]), frame.dtype)
        top, left = max(-y0, 0), max(-x0, 0)
        bottom, right = s - top - patch.shape[0], s - left - patch.shape[1]
        patch = cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    if s <= size:
        return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    # shrinking: linear to twice the size, then an exact 2x area halving; anti-aliased like
    # INTER_AREA, which costs ~10x more at a fractional ratio (2 ms for 560 -> 224 px)
    patch = cv2.resize(patch, (2 * size, 2 * size), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


def lip_matrix(centre: np.ndarray, angle: float, iod: float, size: int) -> np.ndarray:
    """Affine [2, 3] from frame pixels to a lip crop: lip centre to the middle, mouth corners
    level (rotate by the corner line's angle), LIP_SPAN inter-ocular distances across."""
    cx, cy = float(centre[0]), float(centre[1])
    m = cv2.getRotationMatrix2D((cx, cy), angle, size / (LIP_SPAN * iod))
    m[0, 2] += size / 2 - cx
    m[1, 2] += size / 2 - cy
    return m


def crop_lips(frame: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Grayscale lip crop uint8 [size, size] through the affine m (see `lip_matrix`)."""
    rgb = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class FaceTracker:
    """Ingest stage: the active speaker's face and lip crops for each clip.

    Loads the MediaPipe models once (one instance per Ray Data actor) and keeps no state
    between clips. Call `track` on one clip, or the instance on a Ray Data batch.
    """

    def __init__(
        self,
        face_size: int = 224,
        lip_size: int = 96,
        max_faces: int = 2,
        min_confidence: float = 0.5,
    ) -> None:
        if face_size < 8 or lip_size < 8:
            raise ValueError(f"face_size={face_size}, lip_size={lip_size}: use 8 px or more")
        if max_faces < 1:
            raise ValueError(f"max_faces={max_faces}: track at least 1 face")
        if not 0.0 < min_confidence < 1.0:
            raise ValueError(f"min_confidence={min_confidence}: use a value in (0, 1)")
        import mediapipe as mp  # heavy import, only where a stage is built

        self.face_size, self.lip_size, self.max_faces = face_size, lip_size, max_faces
        mesh = mp.solutions.face_mesh
        # video mode: landmarks of the last frame seed the next; the detector only runs while
        # fewer than max_faces faces are being followed
        self._mesh = mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence,
        )
        # second chance for faces too small for the mesh's short-range detector
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )
        self._crop_mesh = mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=1,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
        )

    def close(self) -> None:
        """Release the MediaPipe graphs."""
        for graph in (self._mesh, self._detector, self._crop_mesh):
            graph.close()

    def _mesh_in_square(self, frame: np.ndarray, square: Square) -> list[np.ndarray]:
        """Landmarks from the mesh run on a square of the frame upscaled to RETRY_SIZE, where a
        small face fills enough pixels for the landmark model; [k, 2] frame pixels each."""
        cx, cy, side = square
        crop = crop_square(frame, cx, cy, side, RETRY_SIZE)  # [RETRY_SIZE, RETRY_SIZE, 3]
        s = max(int(round(side)), 1)
        corner = np.array([round(cx - s / 2), round(cy - s / 2)])  # where crop_square starts
        found = _landmarks(self._crop_mesh.process(crop), RETRY_SIZE, RETRY_SIZE)
        return [pts * (s / RETRY_SIZE) + corner for pts in found]

    def _detect_small(self, frame: np.ndarray) -> list[Square]:
        """Squares (twice the box) around the faces the full-range detector finds."""
        h, w = frame.shape[:2]
        squares = []
        for det in (self._detector.process(frame).detections or [])[: self.max_faces]:
            rb = det.location_data.relative_bounding_box
            cx, cy = (rb.xmin + rb.width / 2) * w, (rb.ymin + rb.height / 2) * h
            squares.append((cx, cy, 2.0 * max(rb.width * w, rb.height * h)))
        return squares

    def _faces(self, frames: np.ndarray) -> list[list[_Face]]:
        """Faces measured in every frame; frames: [f, h, w, 3].

        Frames where the mesh finds nothing get the small-face path: follow the squares of
        small faces found in the previous frame, else look for new ones with the full-range
        detector, which after a miss runs only every RETRY_STRIDE frames (it costs about as
        much as the mesh, and most such frames hold no face at all)."""
        self._mesh.reset()  # forget the previous clip's faces
        h, w = frames.shape[1:3]
        out = []
        squares: list[Square] = []  # small faces of the previous frame
        next_detect = 0  # first frame at which the detector may run again
        for f, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)
            # landmarks come normalised, so the reduced frame's map onto the full one
            pts = _landmarks(self._mesh.process(_reduce(frame)), w, h)
            if pts:
                squares = []
            else:
                pts = [p for sq in squares for p in self._mesh_in_square(frame, sq)]
                if not pts and f >= next_detect:
                    found = self._detect_small(frame)
                    pts = [p for sq in found for p in self._mesh_in_square(frame, sq)]
                    next_detect = f + (1 if pts else RETRY_STRIDE)
                squares = [_square_around(p) for p in pts]
            out.append(_dedupe([_measure(p) for p in pts]))
        return out

    def track(self, frames: np.ndarray, speech: np.ndarray, sample_rate: int) -> FaceTrack:
        """Face and lip crops of the active speaker in one clip.

        frames: uint8 RGB [f, h, w, 3] at 25 fps; speech: mono float [n], the clip's speech
        stem; sample_rate: of `speech`. Frames where the chosen face is missing reuse the
        nearest found crop; a clip without faces gives zero arrays and coverage 0.
        """
        frames = _check_frames(frames)
        speech = np.asarray(speech)
        if speech.ndim != 1:
            raise ValueError(
                f"speech has shape {speech.shape}; pass the mono stem [n] (e.g. x.mean(axis=1))"
            )
        if sample_rate <= 0:
            raise ValueError(f"sample_rate={sample_rate}; pass the speech stem's rate in Hz")
        n = len(frames)
        env = lip_envelope(speech_envelope(speech, sample_rate, n))  # [f]
        tracks = _link_tracks(self._faces(frames))
        # tracks shorter than a tenth of the clip (and 2 frames) are detector noise
        seen = [t for t in tracks if len(t) >= max(2, math.ceil(0.1 * n))] or tracks
        chosen, score = _pick_speaker(seen, env)
        return self._crops(frames, chosen, len(seen), score)

    def _crops(
        self, frames: np.ndarray, chosen: dict[int, _Face] | None, n_faces: int, score: float
    ) -> FaceTrack:
        """Crop the chosen track; frames where it is missing copy the nearest found crop."""
        n, fs, ls = len(frames), self.face_size, self.lip_size
        boxes = np.full((n, 4), np.nan, np.float32)
        mouth = np.full(n, np.nan, np.float32)
        if not chosen:
            face = np.zeros((n, fs, fs, 3), np.uint8)
            return FaceTrack(face, np.zeros((n, ls, ls), np.uint8), 0.0, n_faces, 0.0, boxes, mouth)
        idx = np.array(sorted(chosen))  # [m] found frames
        obs = [chosen[f] for f in idx]
        boxes[idx] = np.stack([o.box for o in obs])
        mouth[idx] = [o.mouth_open for o in obs]
        # crop geometry smoothed along the track: landmark jitter would shake the crops
        box = _smooth(boxes[idx].astype(np.float64))  # [m, 4]
        centre = _smooth(np.stack([o.lip_centre for o in obs]))  # [m, 2]
        angle = _smooth(np.array([[o.angle] for o in obs]))[:, 0]  # [m]
        iod = _smooth(np.array([[o.iod] for o in obs]))[:, 0]  # [m]
        face_crops = np.empty((len(idx), fs, fs, 3), np.uint8)
        lip_crops = np.empty((len(idx), ls, ls), np.uint8)
        for j, f in enumerate(idx):
            x0, y0, x1, y1 = box[j]
            side = FACE_MARGIN * max(x1 - x0, y1 - y0)
            face_crops[j] = crop_square(frames[f], (x0 + x1) / 2, (y0 + y1) / 2, side, fs)
            lip_crops[j] = crop_lips(frames[f], lip_matrix(centre[j], angle[j], iod[j], ls), ls)
        src = _nearest(np.isin(np.arange(n), idx))  # [f] position in idx
        return FaceTrack(
            face=face_crops[src],
            lips=lip_crops[src],
            coverage=len(idx) / n,
            n_faces=n_faces,
            speaker_score=score,
            boxes=boxes,
            mouth_open=mouth,
        )

    def __call__(self, batch: dict) -> dict:
        """Ray Data stage: adds "face", "lips", "face_coverage", "n_faces" and "speaker_score"
        to a batch with "frames" ([f, h, w, 3] uint8 per row), "speech" ([n] float per row) and
        "sample_rate" columns."""
        for col in ("frames", "speech", "sample_rate"):
            if col not in batch:
                raise ValueError(f"batch has no {col!r} column; decode video and speech first")
        results = [
            self.track(frames, speech, int(sr))
            for frames, speech, sr in zip(
                batch["frames"], batch["speech"], batch["sample_rate"], strict=True
            )
        ]
        out = dict(batch)
        out["face"] = _column([r.face for r in results])
        out["lips"] = _column([r.lips for r in results])
        out["face_coverage"] = np.array([r.coverage for r in results], np.float32)
        out["n_faces"] = np.array([r.n_faces for r in results], np.int32)
        out["speaker_score"] = np.array([r.speaker_score for r in results], np.float32)
        return out


def _landmarks(result: object, w: float, h: float) -> list[np.ndarray]:
    """Face-mesh result -> landmarks per face, [k, 2] pixels of a w x h image each."""
    faces = getattr(result, "multi_face_landmarks", None) or []
    scale = np.array([w, h])
    return [np.array([(p.x, p.y) for p in face.landmark]) * scale for face in faces]


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames have shape {frames.shape} and dtype {frames.dtype}; pass uint8 RGB "
            "[f, h, w, 3] (ffmpeg -pix_fmt rgb24)"
        )
    return frames


def _reduce(frame: np.ndarray) -> np.ndarray:
    """The frame shrunk by the smallest integer factor that brings it within MESH_MAX_SIDE."""
    h, w = frame.shape[:2]
    k = math.ceil(max(h, w) / MESH_MAX_SIDE)
    if k <= 1:
        return frame
    return cv2.resize(frame, (w // k, h // k), interpolation=cv2.INTER_AREA)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Centred moving average over SMOOTH_FRAMES rows of x [m, d], edges held."""
    return uniform_filter1d(x, size=min(SMOOTH_FRAMES, len(x)), axis=0, mode="nearest")


def _column(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One batch column: stacked when every row has the same shape, else a list of arrays
    (clips differ in length; Ray Data stores those as variable-shaped tensors)."""
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return arrays
