"""The operation registry: each op is an OpenCV call, its parameters, and its halo.

An op's *halo* is how many pixels around a tile its output depends on. Tiles are
read with the chain's halo clipped at the true page border and the op runs on the
haloed tile; cropping the core then gives exactly the pixels of one call on the
whole page (see README, "Exactness"). Chains add their halos.

Pure module: arrays in, arrays out. No I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.core.params import Param, check_object
from pipeline.errors import OperationError, UnknownOperationError

#: Crop origins of haloed tiles are multiples of this, so SIMD paths of OpenCV see
#: the same alignment as in a whole-page call (float32 filters differ otherwise).
HALO_ALIGN = 16

SUPPORTED_DTYPES = ("uint8", "uint16", "float32")


@dataclass(frozen=True)
class Op:
    """One operation of the registry."""

    name: str
    help: str
    params: tuple[Param, ...]
    apply: Callable[[np.ndarray, dict[str, Any]], np.ndarray]
    halo: Callable[[dict[str, Any], np.dtype], int] = lambda p, dt: 0
    #: None when the op accepts the page, else why not (named in the error)
    accepts: Callable[[dict[str, Any], np.dtype, int], str | None] = lambda p, dt, ch: None
    #: channels of the output given the input's
    out_channels: Callable[[int], int] = lambda ch: ch
    halo_help: str = "0 (a point operation)"
    exact: str = "bit-identical to the OpenCV call on the whole page"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OpCall:
    """An op with its checked parameters, as a chain holds it."""

    op: Op
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op.name, **self.params}


def dtype_max(dtype: np.dtype) -> float:
    """The value white has in this dtype: the integer maximum, or 1.0 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def gaussian_radius(sigma: float, dtype: np.dtype) -> int:
    """Radius of ``cv2.GaussianBlur(img, (0, 0), sigma)``: OpenCV picks the kernel size
    ``round(sigma * (3 if uint8 else 4) * 2 + 1) | 1`` (createGaussianKernels)."""
    factor = 3 if np.dtype(dtype) == np.uint8 else 4
    ksize = round(sigma * factor * 2 + 1) | 1  # Python's round, like cvRound, is half-to-even
    return ksize // 2


def _per_channel(func: Callable[[np.ndarray], np.ndarray], img: np.ndarray,
                 native: tuple[int, ...]) -> np.ndarray:
    """Apply ``func`` directly when OpenCV supports the channel count, else plane by plane."""
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in native:
        return func(img)
    return np.dstack([func(np.ascontiguousarray(img[:, :, c])) for c in range(channels)])


# --- the op functions ---------------------------------------------------------------


def _gaussian_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), p["sigma"])


def _median_blur(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return _per_channel(lambda a: cv2.medianBlur(a, p["ksize"]), img, (1, 3, 4))


def _kernel(ksize: int) -> np.ndarray:
    return np.ones((ksize, ksize), np.uint8)


def _dilate(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.dilate(img, _kernel(p["ksize"]), iterations=p["iterations"])


def _erode(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    return cv2.erode(img, _kernel(p["ksize"]), iterations=p["iterations"])


def _unsharp_mask(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    blur = cv2.GaussianBlur(img, (0, 0), p["sigma"])
    return cv2.addWeighted(img, 1 + p["amount"], blur, -p["amount"], 0)


def _invert(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if img.dtype.kind == "f":
        return np.float32(1.0) - img
    return cv2.bitwise_not(img)


def gamma_lut(gamma: float, dtype: np.dtype) -> np.ndarray:
    """The lookup table of ``gamma`` for an integer dtype: round(max * (v / max) ** (1/gamma))."""
    top = dtype_max(dtype)
    v = np.arange(int(top) + 1, dtype=np.float64) / top
    return np.clip(np.rint(top * v ** (1.0 / gamma)), 0, top).astype(dtype)


def _gamma(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    if img.dtype == np.uint8:
        return cv2.LUT(img, gamma_lut(p["gamma"], img.dtype))
    if img.dtype == np.uint16:
        return gamma_lut(p["gamma"], img.dtype)[img]
    return np.power(np.clip(img, 0, None), np.float32(1.0 / p["gamma"])).astype(img.dtype)


def _threshold(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    top = dtype_max(img.dtype)
    return cv2.threshold(img, p["value"], top, cv2.THRESH_BINARY)[1]


def _to_gray(img: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return img
    if channels == 2:  # gray + alpha: keep the gray plane
        return np.ascontiguousarray(img[:, :, 0])
    code = cv2.COLOR_RGB2GRAY if channels == 3 else cv2.COLOR_RGBA2GRAY
    return cv2.cvtColor(img, code)


# --- the registry -------------------------------------------------------------------


def _median_accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    if np.dtype(dtype) != np.uint8 and p["ksize"] > 5:
        return f"median_blur with ksize {p['ksize']} needs uint8 pixels (OpenCV allows only " \
               f"ksize 3 or 5 for {np.dtype(dtype).name}); use ksize <= 5"
    return None


def _to_gray_accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    return None if channels in (1, 2, 3, 4) else f"to_gray needs 1 to 4 channels, got {channels}"


def _threshold_accepts(p: dict[str, Any], dtype: np.dtype, channels: int) -> str | None:
    if channels > 4:
        return f"threshold needs at most 4 channels, got {channels}"
    return None


_SIGMA = Param("sigma", "number", "standard deviation of the Gaussian, in pixels",
               required=True, gt=0, le=500)
_KSIZE_MORPH = Param("ksize", "integer", "side of the square kernel, in pixels",
                     default=3, ge=1, le=255)
_MORPH_HALO = "(ksize // 2) * iterations"
_ITER = Param("iterations", "integer", "how many times to apply it", default=1, ge=1, le=100)

OPS: dict[str, Op] = {op.name: op for op in (
    Op("gaussian_blur", "cv2.GaussianBlur(img, (0, 0), sigma)", (_SIGMA,), _gaussian_blur,
       halo=lambda p, dt: gaussian_radius(p["sigma"], dt),
       halo_help="the radius OpenCV gives the kernel: (round(sigma * k * 2 + 1) | 1) // 2, k = 3 for "
                 "uint8, 4 otherwise"),
    Op("median_blur", "cv2.medianBlur(img, ksize)",
       (Param("ksize", "integer", "aperture size", required=True, ge=3, le=255, odd=True),),
       _median_blur, halo=lambda p, dt: p["ksize"] // 2, accepts=_median_accepts,
       halo_help="ksize // 2"),
    Op("dilate", "cv2.dilate(img, ones((ksize, ksize)), iterations=iterations)",
       (_KSIZE_MORPH, _ITER), _dilate, halo=lambda p, dt: (p["ksize"] // 2) * p["iterations"],
       halo_help=_MORPH_HALO),
    Op("erode", "cv2.erode(img, ones((ksize, ksize)), iterations=iterations)",
       (_KSIZE_MORPH, _ITER), _erode, halo=lambda p, dt: (p["ksize"] // 2) * p["iterations"],
       halo_help=_MORPH_HALO),
    Op("unsharp_mask",
       "cv2.addWeighted(img, 1 + amount, cv2.GaussianBlur(img, (0, 0), sigma), -amount, 0)",
       (_SIGMA, Param("amount", "number", "strength of the sharpening", default=1.0,
                      ge=0, le=100)),
       _unsharp_mask, halo=lambda p, dt: gaussian_radius(p["sigma"], dt),
       halo_help="as gaussian_blur"),
    Op("invert", "cv2.bitwise_not(img) for integers; 1 - img for float32", (), _invert),
    Op("gamma", "max * (img / max) ** (1 / gamma), rounded (a LUT for integers)",
       (Param("gamma", "number", "gamma; > 1 brightens", required=True, gt=0, le=100),), _gamma),
    Op("threshold", "cv2.threshold(img, value, max, THRESH_BINARY); max = dtype max (1.0 float)",
       (Param("value", "number", "pixels > value become max, others 0", required=True),),
       _threshold, accepts=_threshold_accepts),
    Op("to_gray", "cv2.cvtColor(img, COLOR_RGB2GRAY / COLOR_RGBA2GRAY); gray+alpha keeps gray",
       (), _to_gray, accepts=_to_gray_accepts, out_channels=lambda ch: 1),
)}


def get_op(name: str) -> Op:
    try:
        return OPS[name]
    except KeyError:
        known = ", ".join(sorted(OPS))
        raise UnknownOperationError(f"unknown op {name!r}; known ops: {known}") from None


def parse_chain(ops: Any, path: str = "ops") -> tuple[list[OpCall], list[str]]:
    """Parse a JSON op chain; return (calls, problems), every problem with its JSON path."""
    if not isinstance(ops, list):
        return [], [f"{path}: expected a list of ops, got {type(ops).__name__}"]
    calls: list[OpCall] = []
    problems: list[str] = []
    for i, item in enumerate(ops):
        here = f"{path}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            problems.append(f'{here}: expected an object with "op": one of {", ".join(OPS)}')
            continue
        op = OPS.get(item["op"])
        if op is None:
            problems.append(f"{here}.op: unknown op {item['op']!r} (known: {', '.join(OPS)})")
            continue
        values, probs = check_object(item, op.params, here, reserved=("op",))
        problems.extend(probs)
        if not probs:
            calls.append(OpCall(op, values))
    return calls, problems


def chain_from_json(ops: list[dict[str, Any]]) -> list[OpCall]:
    """A chain from JSON that was validated before (raises on any problem)."""
    calls, problems = parse_chain(ops)
    if problems:
        raise OperationError("; ".join(problems))
    return calls


def chain_halo(chain: list[OpCall], dtype: np.dtype) -> int:
    """The halo of a chain: the sum of its ops' halos, rounded up to HALO_ALIGN (0 stays 0)."""
    total = sum(c.op.halo(c.params, dtype) for c in chain)
    return -(-total // HALO_ALIGN) * HALO_ALIGN


def chain_out_channels(chain: list[OpCall], channels: int) -> int:
    for call in chain:
        channels = call.op.out_channels(channels)
    return channels


def chain_problems(chain: list[OpCall], dtype: np.dtype, channels: int) -> list[str]:
    """Why this chain cannot run on pages of this dtype and channel count (empty if it can)."""
    problems: list[str] = []
    if chain and np.dtype(dtype).name not in SUPPORTED_DTYPES:
        problems.append(f"pixels of type {np.dtype(dtype).name} are not supported by the ops "
                        f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        return problems
    for i, call in enumerate(chain):
        why = call.op.accepts(call.params, dtype, channels)
        if why:
            problems.append(f"ops[{i}] ({call.op.name}): {why}")
        channels = call.op.out_channels(channels)
    return problems


def apply_chain(img: np.ndarray, chain: list[OpCall]) -> np.ndarray:
    """Run a chain on an array ((h, w) or (h, w, c)); the result keeps the input's dtype."""
    for call in chain:
        out = call.op.apply(img, call.params)
        if out.dtype != img.dtype:
            out = out.astype(img.dtype)
        img = out
    return img
