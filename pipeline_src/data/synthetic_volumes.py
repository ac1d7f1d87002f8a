"""Synthetic abdominal CT volumes with 8 labelled organs (Synapse-style), written as real NIfTI files.

    python -m pipeline_src.data.synthetic_volumes OUT_DIR [--n-cases 8] [--shape 64 64 24] [--seed 0]

Normally called by ``medref download <ds>`` when ``datasets.<ds>.kind: volumes`` and ``source: synthetic``.

Raw layout (nnU-Net style, so a real nnU-Net / Synapse release in the same layout runs through the same code):

    OUT_DIR/imagesTr/<case>.nii.gz   int16 HU, shape (X, Y, Z), affine diag(-sx, -sy, sz) (LPS voxel axes, as
                                     nibabel gives for an axial DICOM series: i -> patient left, j -> posterior)
    OUT_DIR/labelsTr/<case>.nii.gz   uint8 class indices, same shape and affine
    OUT_DIR/dataset.json             nnU-Net v2 fields: name, channel_names, labels {name: index}, numTraining,
                                     file_ending; plus ``generator`` (version, seed, shape) for provenance

Classes follow the TransUNet/Synapse 8-organ convention (index order below). What makes it a useful stand-in:
- organs are deformed, rotated ellipsoids at plausible positions in a patient frame (liver large on the
  patient's right, spleen posterior left, kidneys paravertebral with the right one lower, aorta a tube left of
  the spine, pancreas a curved band across the midline, stomach a bent sac anterior left, gallbladder under
  the liver), jittered per case;
- portal-venous-like HU means with texture and scanner noise and a slight blur (partial volume), so the
  [-125, 275] HU window the Synapse literature uses gives realistic contrast; body, fat ring and spine around;
- anisotropic spacing that varies per case (in-plane FOV 340-420 mm, slab 200-260 mm);
- the gallbladder is missing in every fifth case (cholecystectomy is common in the real cohort),
  so "class absent from a case" is exercised by every run, not only by a unit test.

Deterministic from ``seed``: one RNG per case keyed by (seed, case index); nibabel writes gzip with mtime 0,
so the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline_src.utils.io import atomic_dir, write_json

# bump when the output changes, so cached raw folders are regenerated (download.py pattern)
GENERATOR_VERSION = 1

# TransUNet's 8-organ Synapse subset, in its index order (label 0 = background).
LABELS: dict[str, int] = {
    "background": 0,
    "aorta": 1,
    "gallbladder": 2,
    "left_kidney": 3,
    "right_kidney": 4,
    "liver": 5,
    "pancreas": 6,
    "spleen": 7,
    "stomach": 8,
}
# every GALLBLADDER_ABSENT_EVERY-th case has no gallbladder (index 4, 9, ...): fixed rather than random so that
# even a 5-case run contains a class absent from a case
GALLBLADDER_ABSENT_EVERY = 5


@dataclass(frozen=True)
class Organ:
    name: str
    # centre in mm in the patient frame: x -> patient LEFT, y -> POSTERIOR, z -> SUPERIOR (volume centre = 0)
    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    hu: float
    texture: float  # within-organ HU standard deviation
    bend: float = 0.0  # y offset per mm^2 of x distance from the centre (curved pancreas / stomach)


# Painted in this order: later organs overwrite earlier ones where the jittered shapes overlap, so the small
# organs stay whole and the big liver yields (as in real label maps, where organs never overlap).
ORGANS = (
    Organ("liver", (-65.0, -5.0, 45.0), (80.0, 75.0, 65.0), 105.0, 8.0),
    Organ("spleen", (85.0, 45.0, 50.0), (28.0, 40.0, 45.0), 115.0, 7.0),
    Organ("stomach", (45.0, -35.0, 50.0), (50.0, 35.0, 45.0), 25.0, 10.0, bend=0.006),
    Organ("left_kidney", (65.0, 60.0, -10.0), (25.0, 25.0, 48.0), 180.0, 12.0),
    Organ("right_kidney", (-65.0, 60.0, -30.0), (25.0, 25.0, 48.0), 180.0, 12.0),
    Organ("pancreas", (10.0, 15.0, 5.0), (60.0, 16.0, 18.0), 95.0, 8.0, bend=-0.005),
    Organ("gallbladder", (-50.0, -45.0, 0.0), (16.0, 15.0, 30.0), 5.0, 4.0),
    # a vertical tube through the whole slab: the huge z radius makes the ellipsoid a cylinder
    Organ("aorta", (15.0, 40.0, 0.0), (11.0, 11.0, 1e4), 165.0, 6.0),
)


def _case_volume(
    rng: np.random.Generator, shape: tuple[int, int, int], no_gallbladder: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One case: (int16 HU image, uint8 labels, affine)."""
    from scipy.ndimage import gaussian_filter

    nx, ny, nz = shape
    fov = rng.uniform(340.0, 420.0)
    slab = rng.uniform(200.0, 260.0)
    sx, sy, sz = fov / nx, fov / ny, slab / nz
    # voxel-centre coordinates in mm, volume centre at 0; broadcastable [X,1,1] / [1,Y,1] / [1,1,Z]
    x = ((np.arange(nx) - (nx - 1) / 2) * sx)[:, None, None]
    y = ((np.arange(ny) - (ny - 1) / 2) * sy)[None, :, None]
    z = ((np.arange(nz) - (nz - 1) / 2) * sz)[None, None, :]
    full = np.broadcast_shapes(x.shape, y.shape, z.shape)

    img = np.full(full, -1000.0, dtype=np.float32)  # air
    body_a, body_b = rng.uniform(150, 175), rng.uniform(110, 130)
    body = np.broadcast_to((x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0, full)
    inner = np.broadcast_to((x / (body_a - 15)) ** 2 + (y / (body_b - 15)) ** 2 <= 1.0, full)
    img[body] = -100.0  # subcutaneous fat ring
    img[inner] = 40.0  # muscle / unlabelled soft tissue
    spine = np.broadcast_to(x**2 + (y - 85.0) ** 2 <= 18.0**2, full)
    img[spine] = 450.0

    lab = np.zeros(full, dtype=np.uint8)
    hu_shift = rng.normal(0.0, 8.0)  # contrast timing varies between patients
    for organ in ORGANS:
        # draw every organ's jitter even when the gallbladder is skipped, so the other organs of a case do
        # not depend on whether it is present
        jitter = rng.normal(0.0, 6.0, size=3)
        scale = rng.uniform(0.85, 1.15, size=3)
        angle = np.deg2rad(rng.uniform(-15.0, 15.0))
        waves = rng.normal(0.0, 1.0, size=(3, 3))
        phases = rng.uniform(0, 2 * np.pi, size=3)
        if no_gallbladder and organ.name == "gallbladder":
            continue
        cx, cy, cz = np.asarray(organ.centre) + jitter
        rx, ry, rz = np.asarray(organ.radii) * scale
        dx, dy, dz = x - cx, y - cy, z - cz
        dy = dy - organ.bend * dx**2
        c, s = np.cos(angle), np.sin(angle)
        u, v = (c * dx + s * dy) / rx, (-s * dx + c * dy) / ry
        w = dz / rz
        d = np.sqrt(u**2 + v**2 + w**2)
        # low-frequency radial deformation: the surface radius wobbles by ~+-15 % with the direction
        n = np.maximum(d, 1e-6)
        wobble = sum(
            np.cos(waves[k, 0] * u / n + waves[k, 1] * v / n + waves[k, 2] * w / n + phases[k]) for k in range(3)
        )
        mask = (d <= 1.0 + 0.05 * wobble) & inner
        lab[mask] = LABELS[organ.name]
        img[mask] = organ.hu + hu_shift + rng.normal(0.0, organ.texture, size=int(mask.sum()))

    img = gaussian_filter(img, sigma=(0.7, 0.7, 0.4))  # partial volume; less along the coarse z axis
    img += rng.normal(0.0, 12.0, size=img.shape).astype(np.float32)  # scanner noise
    img = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    affine = np.diag([-sx, -sy, sz, 1.0])
    # corner voxel position so that the volume centre is at the scanner origin
    affine[:3, 3] = [(nx - 1) / 2 * sx, (ny - 1) / 2 * sy, -(nz - 1) / 2 * sz]
    return img, lab, affine


def _nifti(data: np.ndarray, affine: np.ndarray, intent: str | None = None):
    import nibabel as nib

    im = nib.Nifti1Image(data, affine)
    im.header.set_xyzt_units("mm")
    # both qform and sform set (code 1 = scanner) as a scanner export has them; readers differ in which they use
    im.set_qform(affine, code=1)
    im.set_sform(affine, code=1)
    if intent:
        im.header.set_intent(intent)
    return im


def generate_volumes(
    out_dir: str | Path, n_cases: int = 8, shape: tuple[int, int, int] = (64, 64, 24), seed: int = 0
) -> None:
    """Write ``n_cases`` synthetic CT cases to ``out_dir`` (replaced atomically: a killed run leaves nothing)."""
    import nibabel as nib

    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8, got {shape}")
    shape = tuple(int(s) for s in shape)
    with atomic_dir(out_dir) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for i in range(n_cases):
            case = f"case_{i:04d}"
            img, lab, affine = _case_volume(
                np.random.default_rng([seed, i]),
                shape,
                no_gallbladder=i % GALLBLADDER_ABSENT_EVERY == GALLBLADDER_ABSENT_EVERY - 1,
            )
            nib.save(_nifti(img, affine), tmp / "imagesTr" / f"{case}.nii.gz")
            nib.save(_nifti(lab, affine, intent="label"), tmp / "labelsTr" / f"{case}.nii.gz")
        write_json(
            tmp / "dataset.json",
            {
                "name": "synthetic_synapse",
                "description": "synthetic abdominal CT, 8 organs (pipeline_src/data/synthetic_volumes.py)",
                "channel_names": {"0": "CT"},
                "labels": LABELS,
                "numTraining": n_cases,
                "file_ending": ".nii.gz",
                "generator": {"version": GENERATOR_VERSION, "seed": seed, "shape": list(shape)},
            },
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--n-cases", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 24))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    generate_volumes(a.out_dir, a.n_cases, tuple(a.shape), a.seed)


if __name__ == "__main__":
    main()
