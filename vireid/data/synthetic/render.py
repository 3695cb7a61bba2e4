"""Procedural pedestrians rendered as visible (RGB) and infrared (IR) images.

Why it looks the way it does: a synthetic VI-ReID dataset is only useful if matching across modalities is *genuinely*
cross-modal. Each material (cloth, skin, hair, bag, background object) therefore carries an RGB colour and an IR
emissivity drawn **independently**, so an IR image is not the grayscale of the RGB one and colour cannot be matched
across modalities. What survives the modality change is geometry: body proportions, the garment pattern (stripes,
checks, logo, two-tone blocks) whose two materials differ in both colour and emissivity, sleeve and trouser length,
hair length, hat, backpack, shoulder bag. A network has to learn those modality-invariant cues.

Pipeline for one image:

1. :func:`sample_identity` (once per identity) draws body shape, clothing, accessories and a material palette.
2. :func:`sample_scene` (once per camera location) draws a background: wall/floor gradient and objects, each with a
   colour and an emissivity (some objects are warm in IR).
3. :func:`sample_sensor` (once per camera) draws how the camera turns the scene into pixels: illumination cast and
   brightness (RGB), gain/offset/blur (IR), noise, JPEG quality, image scale.
4. :func:`sample_view` (once per image) draws viewpoint (front/back/side), flip, scale/position jitter, pose (arm
   swing, stride), an optional occluder and the background crop.
5. :func:`rasterize` paints the person into a *material-index map* plus a shading map, at 2x resolution;
   :func:`to_rgb` / :func:`to_ir` turn the same raster into an image of either modality. Rendering one raster in
   both modalities is how the market1501_gen fake-IR twins (same pose, same crop) are made.

Everything is a pure function of numpy Generators, so output is reproducible from seeds alone.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

SS = 2  # supersampling factor of the person raster (anti-aliased edges after the 2x2 mean)

# Palette slots of an identity (index into Identity.rgb / Identity.emis). OCCLUDER is appended per view.
SKIN, HAIR, TOP_A, TOP_B, BOT_A, BOT_B, SHOES, HAT, BACKPACK, BAG = range(10)
OCCLUDER = 10
N_SLOTS = 10

TOP_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "split")
TOP_PATTERN_P = (0.24, 0.2, 0.14, 0.14, 0.14, 0.14)
BOTTOM_PATTERNS = ("plain", "hstripes", "vstripes", "checks")
BOTTOM_PATTERN_P = (0.64, 0.12, 0.12, 0.12)
VIEWS = ("front", "back", "side")


def _luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """A cloth-like colour: any hue, moderate-to-strong saturation, a wide range of values."""
    h = rng.random()
    s = rng.uniform(0.15, 0.95) if rng.random() < 0.8 else rng.uniform(0.0, 0.12)  # some grays/black/white
    v = rng.uniform(0.12, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _contrasting(rng: np.random.Generator, rgb: np.ndarray, emis: float) -> tuple[np.ndarray, float]:
    """A second material that differs clearly from (rgb, emis) in luminance AND emissivity.

    Pattern materials must differ in both, otherwise the pattern would be visible in one modality only.
    """
    for _ in range(200):
        c = _random_colour(rng)
        e = float(rng.uniform(0.08, 0.9))
        if abs(_luma(c) - _luma(rgb)) >= 0.25 and abs(e - emis) >= 0.25:
            return c, e
    # a deterministic fallback that always satisfies both constraints
    c = np.full(3, 0.9 if _luma(rgb) < 0.5 else 0.1, dtype=np.float32)
    return c, (0.9 if emis < 0.5 else 0.08)


@dataclass
class Identity:
    """Everything that makes one person recognisable; fixed for all images of that person."""

    gender: str
    height: float          # person height as a fraction of the nominal detection height
    head: float            # head size multiplier
    shoulder: float        # shoulder width multiplier
    hip: float
    leg: float             # leg length as a fraction of the body height
    build: float           # limb thickness multiplier
    sleeve: float          # 0.3 short sleeve .. 1 long sleeve (fraction of the arm covered)
    top_len: float         # how far the top extends below the hip (fraction of body height)
    coat: bool             # top flares out like a coat
    bottom: str            # trousers / shorts / skirt
    top_pattern: str
    top_period: float      # pattern period, fraction of body height
    bottom_pattern: str
    bottom_period: float
    long_hair: bool
    hat: bool
    backpack: bool
    bag: int               # 0 none, -1 bag on the left hip, +1 right hip
    rgb: np.ndarray        # [N_SLOTS, 3] float32 in 0..1
    emis: np.ndarray       # [N_SLOTS] float32 in 0..1 (IR brightness)
    view_bias: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.float32) / 3)


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a person. Colours and emissivities are drawn independently of each other."""
    gender = "female" if rng.random() < 0.45 else "male"
    rgb = np.zeros((N_SLOTS, 3), np.float32)
    emis = np.zeros(N_SLOTS, np.float32)
    # skin: warm (bright) in IR, natural tones in RGB
    tone = rng.uniform(0.25, 0.9)
    rgb[SKIN] = np.array([0.55 + 0.4 * tone, 0.38 + 0.42 * tone, 0.28 + 0.4 * tone], np.float32)
    emis[SKIN] = rng.uniform(0.86, 0.97)
    hair_v = rng.choice([0.06, 0.15, 0.3, 0.55, 0.7])
    rgb[HAIR] = np.array(colorsys.hsv_to_rgb(rng.uniform(0.03, 0.12), rng.uniform(0.2, 0.7), hair_v), np.float32)
    emis[HAIR] = rng.uniform(0.3, 0.55)
    for slot in (TOP_A, BOT_A, SHOES, HAT, BACKPACK, BAG):
        rgb[slot] = _random_colour(rng)
        emis[slot] = rng.uniform(0.08, 0.8)
    rgb[TOP_B], emis[TOP_B] = _contrasting(rng, rgb[TOP_A], float(emis[TOP_A]))
    rgb[BOT_B], emis[BOT_B] = _contrasting(rng, rgb[BOT_A], float(emis[BOT_A]))
    # accessories must stand out from the top in both modalities, or they carry no signal in one of them
    for slot in (BACKPACK, BAG):
        rgb[slot], emis[slot] = _contrasting(rng, rgb[TOP_A], float(emis[TOP_A]))
    bottom = rng.choice(["trousers", "shorts", "skirt"], p=[0.7, 0.15, 0.15] if gender == "female" else [0.8, 0.2, 0.0])
    return Identity(
        gender=gender,
        height=float(rng.uniform(0.86, 1.0)),
        head=float(rng.uniform(0.85, 1.15)),
        shoulder=float(rng.uniform(0.8, 1.25) * (0.92 if gender == "female" else 1.0)),
        hip=float(rng.uniform(0.85, 1.2)),
        leg=float(rng.uniform(0.43, 0.52)),
        build=float(rng.uniform(0.8, 1.3)),
        sleeve=float(rng.choice([0.32, 0.55, 1.0], p=[0.35, 0.1, 0.55])),
        top_len=float(rng.choice([0.0, 0.04, 0.12, 0.26], p=[0.4, 0.3, 0.15, 0.15])),
        coat=bool(rng.random() < 0.2),
        bottom=str(bottom),
        top_pattern=str(rng.choice(TOP_PATTERNS, p=TOP_PATTERN_P)),
        top_period=float(rng.uniform(0.035, 0.09)),
        bottom_pattern=str(rng.choice(BOTTOM_PATTERNS, p=BOTTOM_PATTERN_P)),
        bottom_period=float(rng.uniform(0.04, 0.09)),
        long_hair=bool(rng.random() < (0.6 if gender == "female" else 0.1)),
        hat=bool(rng.random() < 0.18),
        backpack=bool(rng.random() < 0.35),
        bag=int(rng.choice([0, -1, 1], p=[0.72, 0.14, 0.14])),
        rgb=rgb,
        emis=emis,
        view_bias=rng.dirichlet(np.full(3, 6.0)).astype(np.float32),
    )


# ------------------------------------------------------------------------------------------------ scenes, sensors
@dataclass
class Scene:
    """A camera location: wall/floor and objects, each with a colour and an emissivity.

    Coordinates are in image units (x: fraction of the image width, y: fraction of its height) on a plane larger than
    one image; each view crops it at a random offset, so the background varies between images of one camera.
    """

    horizon: float
    wall_rgb: tuple[np.ndarray, np.ndarray]   # top and bottom colour of the wall gradient
    floor_rgb: np.ndarray
    wall_emis: tuple[float, float]
    floor_emis: float
    objects: list[tuple[str, float, float, float, float, np.ndarray, float]]  # kind, x0, y0, x1, y1, rgb, emis


def sample_scene(rng: np.random.Generator, outdoor: bool) -> Scene:
    """Draw a background for one camera location (outdoor: brighter, greener/grayer; indoor: walls, doors)."""
    if outdoor:
        top = np.array(colorsys.hsv_to_rgb(rng.uniform(0.5, 0.65), rng.uniform(0.05, 0.4), rng.uniform(0.6, 0.95)))
        bottom = np.array(colorsys.hsv_to_rgb(rng.uniform(0.15, 0.4), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.7)))
        floor = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.7)))
    else:
        hue = rng.uniform(0, 1)
        top = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.0, 0.3), rng.uniform(0.55, 0.95)))
        bottom = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.0, 0.3), rng.uniform(0.4, 0.85)))
        floor = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.75)))
    objects = []
    for _ in range(int(rng.integers(5, 11))):
        kind = str(rng.choice(["rect", "ellipse", "pole"], p=[0.5, 0.25, 0.25]))
        x0 = rng.uniform(-0.6, 1.5)
        y0 = rng.uniform(-0.2, 0.9)
        w = rng.uniform(0.03, 0.12) if kind == "pole" else rng.uniform(0.15, 0.8)
        h = rng.uniform(0.4, 1.2) if kind == "pole" else rng.uniform(0.08, 0.5)
        warm = rng.random() < 0.2  # lamps, engines, radiators: bright in IR
        emis = rng.uniform(0.55, 0.85) if warm else rng.uniform(0.05, 0.4)
        col = _random_colour(rng)
        col = (0.5 * col + 0.5 * col.mean()).astype(np.float32)  # man-made backgrounds: muted colours
        objects.append((kind, x0, y0, x0 + w, y0 + h, col, float(emis)))
    return Scene(
        horizon=float(rng.uniform(0.55, 0.8)),
        wall_rgb=(top.astype(np.float32), bottom.astype(np.float32)),
        floor_rgb=floor.astype(np.float32),
        wall_emis=(float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.08, 0.3))),
        floor_emis=float(rng.uniform(0.05, 0.3)),
        objects=objects,
    )


@dataclass
class Sensor:
    """How one camera turns a scene into pixels."""

    modality: int            # 0 visible, 1 infrared
    style: str               # rgb, lowlight, nir, thermal
    scale: float             # image-size multiplier (real detection crops vary per camera)
    cast: np.ndarray         # RGB: per-channel illumination multipliers
    brightness: float        # RGB: overall exposure
    gain: float              # IR: emissivity -> intensity
    offset: float
    blur: float              # IR blur radius (output pixels)
    noise: float             # Gaussian noise sigma, 0..1 scale
    quality: int             # JPEG quality
    person_scale: float      # nominal person height / image height
    views: np.ndarray        # camera's viewpoint preference (front, back, side)


def sample_sensor(rng: np.random.Generator, modality: int, style: str, vary_size: bool = True) -> Sensor:
    """Draw a camera. ``style``: rgb (ordinary), lowlight (dark, noisy RGB), nir (active near-IR), thermal."""
    if modality == 0:
        cast = rng.uniform(0.82, 1.12, size=3).astype(np.float32)
        cast /= cast.mean()
        bright = rng.uniform(0.3, 0.55) if style == "lowlight" else rng.uniform(0.85, 1.1)
        noise = rng.uniform(0.03, 0.06) if style == "lowlight" else rng.uniform(0.008, 0.02)
        gain, offset, blur = 1.0, 0.0, 0.0
    else:
        cast = np.ones(3, np.float32)
        bright = 1.0
        gain = rng.uniform(0.85, 1.15)
        offset = rng.uniform(-0.05, 0.08)
        blur = rng.uniform(1.0, 1.5) if style == "thermal" else rng.uniform(0.5, 0.9)
        noise = rng.uniform(0.015, 0.035)
    return Sensor(
        modality=modality,
        style=style,
        scale=float(rng.uniform(0.85, 1.3)) if vary_size else 1.0,
        cast=cast,
        brightness=float(bright),
        gain=float(gain),
        offset=float(offset),
        blur=float(blur),
        noise=float(noise),
        quality=int(rng.integers(80, 96)),
        person_scale=float(rng.uniform(0.8, 0.9)),
        views=rng.dirichlet(np.full(3, 3.0)).astype(np.float32),
    )


# ------------------------------------------------------------------------------------------------------- one view
@dataclass
class View:
    """Per-image geometry and nuisances (shared by every modality rendered from it)."""

    size: tuple[int, int]     # output H, W
    view: str                 # front / back / side
    flip: bool
    scale: float              # person height / image height
    cx: float                 # person centre x, fraction of image width
    feet: float               # feet y, fraction of image height
    arm_swing: float          # hand offset (fraction of body height), + forwards
    stride: float             # feet separation (fraction of body height)
    occluder: tuple[str, float, float] | None  # kind ("bottom"/"left"/"right"), extent, softness
    occ_rgb: np.ndarray
    occ_emis: float
    crop: tuple[float, float]  # background crop offset
    clutter: list[tuple[str, float, float, float, float, np.ndarray, float]]
    exposure: float           # per-image RGB exposure jitter
    ir_jitter: float          # per-image IR gain jitter


def sample_view(rng: np.random.Generator, ident: Identity, sensor: Sensor, size: tuple[int, int],
                size_jitter: float = 0.0, occlusion_p: float = 0.2, force_view: str | None = None,
                zoom: float = 1.0) -> View:
    """Draw the per-image nuisances.

    ``size`` is the camera's nominal output size and ``size_jitter`` varies it per image (detection crops differ in
    size). ``force_view`` fixes the viewpoint (RegDB names it in the file name); ``zoom`` > 1 crops the person badly
    (Market "junk" detections).
    """
    h, w = size
    if size_jitter > 0:
        f = rng.uniform(1 - size_jitter, 1 + size_jitter)
        h, w = int(round(h * f)), int(round(w * rng.uniform(0.95, 1.05) * f))
    p = 0.5 * ident.view_bias + 0.5 * sensor.views
    view = str(rng.choice(VIEWS, p=p / p.sum()))
    if force_view is not None:
        view = force_view
    occ = None
    if rng.random() < occlusion_p:
        kind = str(rng.choice(["bottom", "left", "right"], p=[0.5, 0.25, 0.25]))
        extent = rng.uniform(0.15, 0.4) if kind == "bottom" else rng.uniform(0.08, 0.25)
        occ = (kind, float(extent), float(rng.uniform(0, 1)))
    clutter = []
    for _ in range(int(rng.integers(0, 3))):
        x0, y0 = rng.uniform(-0.2, 1.0), rng.uniform(0.0, 1.0)
        clutter.append((str(rng.choice(["rect", "ellipse"])), x0, y0, x0 + rng.uniform(0.1, 0.4),
                        y0 + rng.uniform(0.05, 0.3), _random_colour(rng), float(rng.uniform(0.05, 0.7))))
    return View(
        size=(max(h, 16), max(w, 8)),
        view=view,
        flip=bool(rng.random() < 0.5),
        scale=float(sensor.person_scale * ident.height * rng.uniform(0.93, 1.05) * zoom),
        cx=float(0.5 + rng.uniform(-0.06, 0.06)),
        feet=float(rng.uniform(0.93, 0.985) + (zoom - 1.0) * rng.uniform(0.0, 0.8)),
        arm_swing=float(rng.uniform(-0.07, 0.07)),
        stride=float(rng.uniform(0.0, 0.12)),
        occluder=occ,
        occ_rgb=_random_colour(rng),
        occ_emis=float(rng.uniform(0.05, 0.9)),
        crop=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.1, 0.1))),
        clutter=clutter,
        exposure=float(rng.uniform(0.9, 1.1)),
        ir_jitter=float(rng.uniform(0.93, 1.07)),
    )


# ------------------------------------------------------------------------------------------------------ rasterize
@dataclass
class Raster:
    """A rendered view before the sensor: material indices, shading, and the background in both modalities."""

    mat: np.ndarray       # [SS*H, SS*W] int8, -1 background, else palette slot
    shade: np.ndarray     # [SS*H, SS*W] float32
    bg_rgb: np.ndarray    # [H, W, 3] float32
    bg_emis: np.ndarray   # [H, W] float32
    rgb: np.ndarray       # palette [N_SLOTS+1, 3] (identity + occluder)
    emis: np.ndarray      # palette [N_SLOTS+1]


class _Canvas:
    """Painter's-algorithm canvas of material indices; every primitive only touches its bounding box."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.mat = np.full((h, w), -1, np.int8)
        self.shade = np.ones((h, w), np.float32)
        self.ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
        self.xs = np.arange(w, dtype=np.float32)[None, :] + 0.5

    def _box(self, x0: float, y0: float, x1: float, y1: float):
        i0, i1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)) + 1, self.h)
        j0, j1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)) + 1, self.w)
        if i0 >= i1 or j0 >= j1:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.ys[i0:i1], self.xs[:, j0:j1]

    def put(self, sl, mask: np.ndarray, material, shade: np.ndarray) -> None:
        """Write ``material`` (a slot or an array of slots) where ``mask`` holds inside the box ``sl``."""
        m = self.mat[sl]
        s = self.shade[sl]
        mat = np.broadcast_to(np.asarray(material, dtype=np.int8), mask.shape)
        m[mask] = mat[mask]
        s[mask] = np.broadcast_to(shade, mask.shape)[mask]

    def ellipse(self, cx, cy, rx, ry, material, pattern=None) -> None:
        box = self._box(cx - rx, cy - ry, cx + rx, cy + ry)
        if box is None:
            return
        sl, y, x = box
        d = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        mask = d <= 1.0
        shade = 1.0 - 0.3 * np.clip(d, 0, 1) - 0.1 * (x - cx) / rx
        self.put(sl, mask, pattern(x, y) if pattern else material, shade)

    def trapezoid(self, cx, y0, y1, hw0, hw1, material, pattern=None, dx1: float = 0.0) -> None:
        """Rows y0..y1, half width hw0 at y0 linearly to hw1 at y1, centre sliding from cx to cx+dx1."""
        hw = max(hw0, hw1)
        box = self._box(cx - hw - abs(dx1), y0, cx + hw + abs(dx1), y1)
        if box is None:
            return
        sl, y, x = box
        t = np.clip((y - y0) / max(y1 - y0, 1e-6), 0, 1)
        half = hw0 + (hw1 - hw0) * t
        c = cx + dx1 * t
        u = (x - c) / half
        mask = (np.abs(u) <= 1.0) & (y >= y0) & (y <= y1)
        shade = 1.0 - 0.3 * u ** 2 - 0.1 * u
        self.put(sl, mask, pattern(x, y) if pattern else material, shade)

    def capsule(self, x0, y0, x1, y1, r, material, pattern=None, t_split: float | None = None,
                material2=None) -> None:
        """A limb from (x0, y0) to (x1, y1), radius r. With ``t_split`` the part beyond t is ``material2``."""
        box = self._box(min(x0, x1) - r, min(y0, y1) - r, max(x0, x1) + r, max(y0, y1) + r)
        if box is None:
            return
        sl, y, x = box
        vx, vy = x1 - x0, y1 - y0
        ll = vx * vx + vy * vy + 1e-9
        t = np.clip(((x - x0) * vx + (y - y0) * vy) / ll, 0, 1)
        px, py = x0 + t * vx - x, y0 + t * vy - y
        d = np.sqrt(px * px + py * py) / r
        mask = d <= 1.0
        shade = 1.0 - 0.3 * d ** 2
        mat = pattern(x, y) if pattern else np.broadcast_to(np.int8(material), mask.shape)
        if t_split is not None:
            mat = np.where(t > t_split, np.int8(material2), mat)
        self.put(sl, mask, mat, shade)

    def rect(self, x0, y0, x1, y1, material) -> None:
        box = self._box(x0, y0, x1, y1)
        if box is None:
            return
        sl, y, x = box
        mask = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        u = (x - (x0 + x1) / 2) / max((x1 - x0) / 2, 1e-6)
        self.put(sl, mask, material, 1.0 - 0.2 * np.clip(u, -1, 1) ** 2 + 0.0 * y)


def _pattern(kind: str, period: float, a: int, b: int, cx: float, top: float, hp: float,
             y_mid: float, front: bool):
    """Pattern function of a garment in the person frame: returns slot a or b per pixel."""
    p = period * hp

    def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        X, Y = (x - cx), (y - top)
        if kind == "hstripes":
            sel = (np.floor(Y / (p / 2)) % 2).astype(bool)
        elif kind == "vstripes":
            sel = (np.floor(X / (p / 2)) % 2).astype(bool)
        elif kind == "checks":
            sel = ((np.floor(Y / p) + np.floor(X / p)) % 2).astype(bool)
        elif kind == "split":
            sel = y > y_mid
        elif kind == "logo" and front:
            sel = (np.abs(X) < 0.055 * hp) & (Y > 0.2 * hp) & (Y < 0.29 * hp)
        else:
            sel = np.zeros(np.broadcast(x, y).shape, bool)
        return np.where(sel, np.int8(b), np.int8(a))

    return fn


def rasterize(ident: Identity, view: View, scene: Scene) -> Raster:
    """Paint the person of ``ident`` in ``view`` (and the background of ``scene``) into a modality-free raster."""
    H, W = view.size
    cv = _Canvas(H * SS, W * SS)
    hp = view.scale * H * SS                       # body height in raster pixels
    feet = view.feet * H * SS
    top = feet - hp
    cx = view.cx * W * SS
    side = view.view == "side"
    front = view.view == "front"
    back = view.view == "back"
    b = ident.build

    head_ry = 0.062 * ident.head * hp
    head_rx = 0.78 * head_ry * (1.05 if side else 1.0)
    head_cy = top + head_ry
    sh_y = top + 0.15 * hp
    hip_y = top + (1.0 - ident.leg) * hp
    width_f = 0.62 if side else 1.0
    sh_half = 0.115 * ident.shoulder * b ** 0.5 * hp * width_f
    hip_half = 0.085 * ident.hip * b ** 0.5 * hp * width_f
    arm_r = 0.03 * b * hp
    leg_r = 0.045 * b * hp
    arm_len = 0.37 * hp
    top_pat = _pattern(ident.top_pattern, ident.top_period, TOP_A, TOP_B, cx, top, hp,
                       (sh_y + hip_y) / 2, front)
    bot_pat = _pattern(ident.bottom_pattern, ident.bottom_period, BOT_A, BOT_B, cx, top, hp,
                       hip_y + 0.25 * hp, True)
    face_dir = 1.0  # side views face right before the optional flip

    # hair hanging behind the head (front: visible beside the neck)
    if ident.long_hair and not back:
        cv.trapezoid(cx - (0.25 * head_rx if side else 0), head_cy, sh_y + 0.12 * hp,
                     head_rx * 1.05, head_rx * (0.9 if side else 1.25), HAIR)
    # backpack behind the body in side view
    if ident.backpack and side:
        cv.rect(cx - sh_half - 0.11 * hp, sh_y + 0.02 * hp, cx - sh_half * 0.5, sh_y + 0.27 * hp, BACKPACK)

    # legs: skin, covered by the bottom garment down to its length, shoes at the feet
    cover = {"trousers": 0.93, "shorts": 0.38, "skirt": 0.0}[ident.bottom]
    leg_len = feet - hip_y - 0.02 * hp
    spread = view.stride * hp
    legs = [(-1, -spread / 2), (1, spread / 2)]
    for side_sign, foot_dx in legs:
        lx = cx + (0.0 if side else side_sign * hip_half * 0.5)
        fx = lx + (foot_dx if side else foot_dx * 0.4)
        if cover > 0:
            cv.capsule(lx, hip_y, fx, hip_y + leg_len, leg_r, BOT_A, pattern=bot_pat, t_split=cover,
                       material2=SKIN)
        else:
            cv.capsule(lx, hip_y, fx, hip_y + leg_len, leg_r * 0.85, SKIN)
        shoe_dx = 0.03 * hp * (face_dir if side else 0)
        cv.ellipse(fx + shoe_dx, feet - 0.02 * hp, leg_r * (1.4 if side else 1.05), 0.028 * hp, SHOES)
    if ident.bottom == "skirt":
        cv.trapezoid(cx, hip_y - 0.02 * hp, hip_y + 0.24 * hp, hip_half, hip_half * 1.6, BOT_A, pattern=bot_pat)
    # torso (the top garment), optionally a flared coat
    t_end = hip_y + ident.top_len * hp
    cv.trapezoid(cx, sh_y, hip_y, sh_half, hip_half * 1.05, TOP_A, pattern=top_pat)
    if ident.top_len > 0:
        flare = 1.35 if ident.coat else 1.1
        cv.trapezoid(cx, hip_y - 1, t_end, hip_half * 1.05, hip_half * flare, TOP_A, pattern=top_pat)
    # backpack over the back
    if ident.backpack and back:
        cv.rect(cx - sh_half * 0.72, sh_y + 0.03 * hp, cx + sh_half * 0.72, sh_y + 0.29 * hp, BACKPACK)
    # arms: sleeve (top material) then skin
    swing = view.arm_swing * hp
    if side:
        arms = [(cx, cx + swing)]
    else:
        arms = [(cx - sh_half + arm_r * 0.6, cx - sh_half - arm_r * 0.4 - abs(swing) * 0.3),
                (cx + sh_half - arm_r * 0.6, cx + sh_half + arm_r * 0.4 + abs(swing) * 0.3)]
    for ax0, ax1 in arms:
        cv.capsule(ax0, sh_y + arm_r, ax1, sh_y + arm_len, arm_r, TOP_A, pattern=top_pat,
                   t_split=ident.sleeve, material2=SKIN)
    # straps of the backpack / bag seen from the front
    if front and ident.backpack:
        for s in (-1, 1):
            cv.trapezoid(cx + s * sh_half * 0.55, sh_y, sh_y + 0.22 * hp, 0.018 * hp, 0.018 * hp, BACKPACK)
    if ident.bag and not side:
        bx = cx + ident.bag * (sh_half + 0.02 * hp)
        cv.trapezoid(cx - ident.bag * sh_half * 0.6, sh_y, hip_y, 0.014 * hp, 0.014 * hp, BAG,
                     dx1=bx - (cx - ident.bag * sh_half * 0.6))
        cv.rect(bx - 0.06 * hp, hip_y - 0.04 * hp, bx + 0.06 * hp, hip_y + 0.07 * hp, BAG)
    elif ident.bag and side:
        cv.rect(cx - 0.06 * hp, hip_y - 0.04 * hp, cx + 0.06 * hp, hip_y + 0.07 * hp, BAG)
    # neck and head
    cv.trapezoid(cx, head_cy + head_ry * 0.6, sh_y + 0.01 * hp, head_rx * 0.45, head_rx * 0.5, SKIN)
    hx = cx + (0.15 * head_rx if side else 0.0)
    if back:
        cv.ellipse(hx, head_cy, head_rx, head_ry, HAIR)
        if ident.long_hair:
            cv.trapezoid(hx, head_cy, sh_y + 0.13 * hp, head_rx, head_rx * 1.2, HAIR)
    else:
        cv.ellipse(hx, head_cy, head_rx, head_ry, SKIN)
        # hair cap: the upper part of the head (plus the back half in side view)
        hair_line = head_cy - (0.2 if front else -0.1) * head_ry

        def hair_fn(x, y, hx=hx, hair_line=hair_line):
            sel = y < hair_line
            if side:
                sel = sel | (x < hx - 0.1 * head_rx)
            return np.where(sel, np.int8(HAIR), np.int8(SKIN))

        cv.ellipse(hx, head_cy, head_rx * 1.04, head_ry * 1.03, SKIN, pattern=hair_fn)
    if ident.hat:
        cv.trapezoid(hx, top - 0.012 * hp, head_cy - 0.25 * head_ry, head_rx * 0.9, head_rx * 1.12, HAT)
        cv.trapezoid(hx + (0.3 * head_rx if side else 0), head_cy - 0.3 * head_ry, head_cy - 0.12 * head_ry,
                     head_rx * (1.5 if side else 1.3), head_rx * (1.5 if side else 1.3), HAT)
    # occluder: a foreground object hiding part of the body
    if view.occluder is not None:
        kind, extent, _ = view.occluder
        Hs, Ws = cv.h, cv.w
        if kind == "bottom":
            cv.rect(-1, feet - extent * hp, Ws + 1, Hs + 1, OCCLUDER)
        elif kind == "left":
            cv.rect(-1, top + 0.2 * hp, cx - sh_half + extent * hp, Hs + 1, OCCLUDER)
        else:
            cv.rect(cx + sh_half - extent * hp, top + 0.2 * hp, Ws + 1, Hs + 1, OCCLUDER)

    bg_rgb, bg_emis = _background(scene, view)
    mat, shade = cv.mat, cv.shade
    if view.flip:
        mat, shade = mat[:, ::-1], shade[:, ::-1]
        bg_rgb, bg_emis = bg_rgb[:, ::-1], bg_emis[:, ::-1]
    rgb = np.concatenate([ident.rgb, view.occ_rgb[None].astype(np.float32)], 0)
    emis = np.concatenate([ident.emis, np.array([view.occ_emis], np.float32)])
    return Raster(np.ascontiguousarray(mat), np.ascontiguousarray(shade), np.ascontiguousarray(bg_rgb),
                  np.ascontiguousarray(bg_emis), rgb, emis)


def _background(scene: Scene, view: View) -> tuple[np.ndarray, np.ndarray]:
    """Render the scene crop of ``view`` at output resolution: [H, W, 3] colour and [H, W] emissivity."""
    H, W = view.size
    dx, dy = view.crop
    y = (np.arange(H, dtype=np.float32)[:, None] + 0.5) / H + dy
    x = (np.arange(W, dtype=np.float32)[None, :] + 0.5) / W + dx
    t = np.clip(y / scene.horizon, 0, 1)[..., None]
    rgb = scene.wall_rgb[0] * (1 - t) + scene.wall_rgb[1] * t
    emis = np.broadcast_to(scene.wall_emis[0] * (1 - t[..., 0]) + scene.wall_emis[1] * t[..., 0], (H, W)).copy()
    rgb = np.broadcast_to(rgb, (H, W, 3)).copy()
    floor = np.broadcast_to(y >= scene.horizon, (H, W))
    rgb[floor] = scene.floor_rgb
    emis[floor] = scene.floor_emis
    for kind, x0, y0, x1, y1, col, e in list(scene.objects) + [
            (k, a + dx, b_ + dy, c + dx, d + dy, col, e) for k, a, b_, c, d, col, e in view.clutter]:
        if kind == "ellipse":
            m = (((x - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((y - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2) <= 1
        else:
            m = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
        if m.any():
            rgb[m] = col
            emis[m] = e
    return rgb.astype(np.float32), emis.astype(np.float32)


# --------------------------------------------------------------------------------------------------------- sensors
def _downsample(a: np.ndarray) -> np.ndarray:
    out = np.zeros((a.shape[0] // SS, a.shape[1] // SS, *a.shape[2:]), np.float32)
    for i in range(SS):
        for j in range(SS):
            out += a[i::SS, j::SS]
    return out * np.float32(1.0 / (SS * SS))


def _composite(r: Raster, plane: np.ndarray, bg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Anti-aliased composite of one 2x-resolution person plane over an output-resolution background plane."""
    return _downsample(plane) + (1.0 - alpha) * bg


def _planes(r: Raster, palette: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Per-pixel palette value times shading, zero outside the person (2-D, channels handled by the caller)."""
    idx = np.maximum(r.mat, 0).astype(np.intp)
    out = np.take(palette, idx)
    out *= shade
    out[r.mat < 0] = 0.0
    return out


def to_rgb(r: Raster, view: View, sensor: Sensor, rng: np.random.Generator) -> Image.Image:
    """Visible image: material colours under the camera's illumination, shading, noise."""
    alpha = _downsample((r.mat >= 0).astype(np.float32))
    gain = sensor.cast * np.float32(sensor.brightness * view.exposure)
    h, w = alpha.shape
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        plane = _planes(r, r.rgb[:, c].astype(np.float32), r.shade)
        img[..., c] = _composite(r, plane, r.bg_rgb[..., c], alpha) * gain[c]
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sensor.noise)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def to_ir(r: Raster, view: View, sensor: Sensor, rng: np.random.Generator, channels: int = 3) -> Image.Image:
    """Infrared image: emissivity (not colour) times the camera gain, cool background, slight blur, noise."""
    alpha = _downsample((r.mat >= 0).astype(np.float32))
    val = _composite(r, _planes(r, r.emis.astype(np.float32), 0.8 + 0.2 * r.shade), r.bg_emis, alpha)
    val = val * np.float32(sensor.gain * view.ir_jitter) + np.float32(sensor.offset)
    if sensor.style == "thermal":
        val = np.clip(val, 0, 1) ** 1.3  # thermal cameras compress the cool end
    img = Image.fromarray((np.clip(val, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    if sensor.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(sensor.blur))
    arr = np.asarray(img, np.float32) / 255
    arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sensor.noise)
    img = Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), "L")
    return img.convert("RGB") if channels == 3 else img
