"""Loading the official parity fixtures and comparing arrays the way the issue specifies."""

import json
import os
import pathlib

import numpy as np

PARITY = pathlib.Path(__file__).parent / "fixtures" / "parity"


def load_case(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((PARITY / f"{name}.json").read_text())
    with np.load(PARITY / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return meta, arrays


def group(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def scale_rel_err(ours, ref) -> float:
    """max|ours - ref| / max|ref| (the issue's per-array measure)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    denom = np.max(np.abs(ref))
    err = np.max(np.abs(ours - ref))
    return float(err / denom) if denom > 0 else float(err)


def assert_close(ours, ref, tol: float, name: str):
    err = scale_rel_err(ours, ref)
    if os.environ.get("PARITY_REPORT"):
        print(f"parity {name}: {err:.3g} (tol {tol:g})")
    assert err <= tol, f"{name}: scale-relative error {err:.3g} > {tol:g}"


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))
