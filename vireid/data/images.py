"""Reading images: always 3-channel RGB, corrupt files reported by name.

Gray (``L``), 16-bit, palette and RGBA images are converted to RGB (SYSU-MM01 stores IR as 3-channel JPEGs; RegDB
thermal BMPs may be 1-channel). A truncated or undecodable file raises :class:`vireid.errors.DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from vireid.errors import DataError

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently padded

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def load_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return a 3-channel RGB image."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found; check the dataset root and list files") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({reason}); "
                        "replace the file or remove it from the list") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite on black rather than dropping alpha blindly: identical for opaque pixels
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        arr8 = (arr / hi * 255.0).round().astype(np.uint8) if hi > 255 else arr.clip(0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def load_resized(path: str | Path, height: int, width: int) -> np.ndarray:
    """Decode ``path`` and resize to (height, width) with Lanczos (the AGW-family preprocessing): uint8 [H, W, 3]."""
    img = load_image(path)
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)
