"""Synthetic Noise2Noise pairs from a single volume (Auto-N2N, section 2.1).

For every voxel ``i`` the most similar patch centred at ``j != i`` inside a
cubic search window is found (sum of squared differences), and ``x[i]`` is
replaced by the centre value ``x[j]``.  The result ``y`` has (nearly) the same
anatomy as ``x`` but a (nearly) independent noise realization, so ``(x, y)``
is a Noise2Noise training pair, and ``x - y`` is a noise probe
(:mod:`bids_auton2n.denoise.noise`).

Algorithm
---------
The patch distances are computed with the displacement-loop ("offset") scheme
of Darbon et al. (2008), the one scikit-image uses for its fast 3D NLM: for
each displacement ``d`` of the search window, the squared-difference volume
``D(p) = (x[p] - x[p + d])**2`` is box-summed with three separable 1D passes,
which gives the patch distance of the pair ``(p, p + d)`` for every ``p`` at
a cost of ``3 * (2 * patch_radius + 1)`` additions per voxel instead of
``(2 * patch_radius + 1) ** 3``.  The distance is symmetric, so only the half
of the displacements that are lexicographically positive is computed; each
distance volume updates the running best candidate of both ``p`` (candidate
``+d``) and ``p + d`` (candidate ``-d``).

Parallelism is race-free: per displacement, one parallel pass over planes
writes the box-summed volume, a second parallel pass over the planes of the
*updated* voxel reads it and updates only voxels of its own plane.

Conventions (mirrored exactly by the reference in ``tests/test_pairs.py``)
-----------------------------------------------------------------------
* Candidates ``j`` must lie inside the volume (no candidate is invented
  outside it); patch members that fall outside the volume take the value of
  the nearest voxel (edge replication, ``numpy.pad(mode="edge")``).
* Candidates are visited in the order ``+d1, -d1, +d2, -d2, ...`` where
  ``d1, d2, ...`` are the lexicographically positive displacements
  ``(dz, dy, dx)`` in lexicographic order; a later candidate replaces the
  current best only if its distance is *strictly* smaller, so ties go to
  the first one visited.
* Distances are accumulated in float64 (exact for integer-valued images such
  as 8-bit scans), values are returned as float32.

References
----------
Darbon J, Cunha A, Chan TF, Osher S, Jensen GJ (2008). Fast nonlocal
filtering applied to electron cryomicroscopy. ISBI 2008, 1331-1334.
Lehtinen J et al. (2018). Noise2Noise: learning image restoration without
clean data. ICML 2018.
Fang C et al. (2021). Noise2Sim: similarity-based self-learning for image
denoising (centre-excluded similarity).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import memory
from ._checks import real_volume

#: Search-window half-width (voxels): a 7x7x7 window, 342 candidates.  The largest
#: radius that meets the 10 s budget on a 197x233x189 volume on 2 cores (radius 3:
#: ~8-9 s uncontended; the cost grows with (2R + 1)**3, radius 4 would take ~2x
#: longer); it also keeps the substituted voxel within 3 voxels, so y stays aligned
#: with x.  The noise calibration (noise_calibration.json) is tied to this value.
SEARCH_RADIUS = 3

#: Patch half-width: 3x3x3 patches as in the paper.
PATCH_RADIUS = 1


def half_displacements(search_radius: int) -> np.ndarray:
    """Lexicographically positive displacements of a cubic search window.

    Parameters
    ----------
    search_radius : int
        Half-width of the window.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int64 array of ``(dz, dy, dx)`` in lexicographic order,
        ``n = ((2 * search_radius + 1) ** 3 - 1) // 2``.  Together with their
        negatives they form the whole window without the centre.
    """
    span = range(-search_radius, search_radius + 1)
    offsets = [(a, b, c) for a in span for b in span for c in span if (a, b, c) > (0, 0, 0)]
    return np.array(offsets, dtype=np.int64).reshape(-1, 3)


@njit(cache=True, inline="always")
def _clamp(index, size):
    if index < 0:
        return 0
    if index >= size:
        return size - 1
    return index


@njit(parallel=True, cache=True)
def _box_sum_xy(x, d, r, lo, hi, out):
    """Squared differences with ``x[p + d]``, box-summed along y and x.

    ``out[k]`` holds the plane ``z = lo[0] - r + k`` for anchors
    ``lo <= p < hi`` in y and x; out-of-volume patch members are clamped.
    """
    nz, ny, nx = x.shape
    n_planes = out.shape[0]
    width_y = hi[1] - lo[1]
    width_x = hi[2] - lo[2]
    # Clamped (edge-replicated) column indices of both patches, shared by all rows.
    cols_a = np.empty(width_x + 2 * r, dtype=np.int64)
    cols_b = np.empty(width_x + 2 * r, dtype=np.int64)
    for b in range(width_x + 2 * r):
        cols_a[b] = _clamp(lo[2] - r + b, nx)
        cols_b[b] = _clamp(lo[2] - r + b + d[2], nx)
    for k in prange(n_planes):
        zz = lo[0] - r + k
        za = _clamp(zz, nz)
        zb = _clamp(zz + d[0], nz)
        row = np.empty(width_x + 2 * r, dtype=np.float64)
        xsum = np.empty((width_y + 2 * r, width_x), dtype=np.float64)
        for a in range(width_y + 2 * r):
            yy = lo[1] - r + a
            line_a = x[za, _clamp(yy, ny)]
            line_b = x[zb, _clamp(yy + d[1], ny)]
            for b in range(width_x + 2 * r):
                diff = np.float64(line_a[cols_a[b]]) - np.float64(line_b[cols_b[b]])
                row[b] = diff * diff
            for b in range(width_x):
                acc = 0.0
                for t in range(2 * r + 1):
                    acc += row[b + t]
                xsum[a, b] = acc
        for a in range(width_y):
            for b in range(width_x):
                acc = 0.0
                for t in range(2 * r + 1):
                    acc += xsum[a + t, b]
                out[k, a, b] = acc


@njit(cache=True, inline="always")
def _distance(x, planes, d, r, lo, pz, py, px, exclude_centre):
    """Patch distance of anchor ``p`` and ``p + d`` from the xy box sums."""
    acc = 0.0
    for t in range(2 * r + 1):
        acc += planes[pz - lo[0] + t, py - lo[1], px - lo[2]]
    if exclude_centre:
        diff = np.float64(x[pz, py, px]) - np.float64(x[pz + d[0], py + d[1], px + d[2]])
        acc -= diff * diff
    return acc


@njit(parallel=True, cache=True)
def _update_best(x, planes, d, r, lo, hi, box_lo, box_hi, mask, exclude_centre, best_dist, best_value):
    """Offer candidate ``+d`` then ``-d`` to every voxel of the mask box.

    Candidate ``+d`` of voxel ``v`` uses the anchor ``p = v``, candidate
    ``-d`` the anchor ``p = v - d``; anchors must lie in ``[lo, hi)``.  Each
    parallel iteration writes only voxels of its own plane.
    """
    for z in prange(box_lo[0], box_hi[0]):
        forward_z = lo[0] <= z < hi[0]
        backward_z = lo[0] <= z - d[0] < hi[0]
        for yv in range(box_lo[1], box_hi[1]):
            forward = forward_z and lo[1] <= yv < hi[1]
            backward = backward_z and lo[1] <= yv - d[1] < hi[1]
            # Per voxel, +d is offered before -d (the documented tie order).
            for xv in range(box_lo[2], box_hi[2]):
                if not mask[z, yv, xv]:
                    continue
                if forward and lo[2] <= xv < hi[2]:
                    dist = _distance(x, planes, d, r, lo, z, yv, xv, exclude_centre)
                    if dist < best_dist[z, yv, xv]:
                        best_dist[z, yv, xv] = dist
                        best_value[z, yv, xv] = x[z + d[0], yv + d[1], xv + d[2]]
                px = xv - d[2]
                if backward and lo[2] <= px < hi[2]:
                    pz = z - d[0]
                    py = yv - d[1]
                    dist = _distance(x, planes, d, r, lo, pz, py, px, exclude_centre)
                    if dist < best_dist[z, yv, xv]:
                        best_dist[z, yv, xv] = dist
                        best_value[z, yv, xv] = x[pz, py, px]


def _mask_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box ``[lo, hi)`` of the non-zero voxels of ``mask``."""
    lo = np.zeros(3, dtype=np.int64)
    hi = np.zeros(3, dtype=np.int64)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lo[axis], hi[axis] = present[0], present[-1] + 1
    return lo, hi


def synthetic_pair(
    x: np.ndarray,
    *,
    search_radius: int = SEARCH_RADIUS,
    patch_radius: int = PATCH_RADIUS,
    exclude_centre: bool = False,
    mask: np.ndarray | None = None,
    slab_planes: int | None = None,
) -> np.ndarray:
    """Second noisy realization ``y`` of ``x`` by most-similar-patch substitution.

    Parameters
    ----------
    x : numpy.ndarray
        3D finite volume.
    search_radius : int
        Half-width of the cubic search window (default :data:`SEARCH_RADIUS`).
    patch_radius : int
        Half-width of the cubic patches (default 1, 3x3x3).
    exclude_centre : bool
        Leave the centre voxel out of the patch distance (Noise2Sim), so that
        the choice of ``j`` does not depend on the noise of ``x[i]`` itself
        through the centre term; this keeps the target's noise closer to
        independent of the input's.
    mask : numpy.ndarray of bool, optional
        Voxels outside the mask are copied unchanged (and not searched for);
        candidates may still come from anywhere in the volume.
    slab_planes : int, optional
        Work on slabs of this many planes along axis 0, each read with a halo of
        ``search_radius + patch_radius`` planes, so that memory follows the slab, not the
        volume; the result is identical. Default: from the memory budget
        (:mod:`~bids_auton2n.denoise.memory`), the whole volume without one.

    Returns
    -------
    numpy.ndarray
        float32 volume of the shape of ``x``.  Deterministic: independent of
        the number of threads.

    Raises
    ------
    ValueError
        If ``x`` is not a finite 3D numeric volume, or the radii or the mask
        are invalid.

    Notes
    -----
    Cost: ``((2R + 1)**3 - 1) / 2`` displacements, each
    ``O(n_voxels * (2r + 1))``.  See the module docstring for the boundary
    and tie-breaking conventions.
    """
    x = real_volume(x, "synthetic_pair")
    if int(search_radius) != search_radius or search_radius < 1:
        raise ValueError(f"search_radius must be an integer >= 1, got {search_radius!r}")
    if int(patch_radius) != patch_radius or patch_radius < 0:
        raise ValueError(f"patch_radius must be an integer >= 0, got {patch_radius!r}")
    search_radius, patch_radius = int(search_radius), int(patch_radius)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if mask is None:
        mask_u8 = np.ones(x.shape, dtype=np.uint8)
    else:
        mask = np.asarray(mask)
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {mask.shape} differs from volume shape {x.shape}")
        mask_u8 = np.ascontiguousarray(mask != 0, dtype=np.uint8)
    if not mask_u8.any():
        return x.copy()
    halo = search_radius + patch_radius  # farthest voxel a patch of a candidate reaches
    if slab_planes is None:
        slab_planes = memory.slab_planes(x.shape, bytes_per_voxel=memory.PAIRS_BYTES_PER_VOXEL,
                                         halo=halo)
    if slab_planes is None or slab_planes >= x.shape[0]:
        return _pair_volume(x, mask_u8, search_radius, patch_radius, bool(exclude_centre))
    # Within a halo of R + r planes every candidate (within R) and every member of its patch
    # (within r of it) that lies in the volume lies in the slab, and the slab's edges are the
    # volume's wherever it is clipped: each voxel sees the same distances, in the same order.
    pair = x.copy()
    for start, stop, read_start, read_stop in memory.slabs(x.shape[0], int(slab_planes), halo):
        if not mask_u8[start:stop].any():
            continue
        slab_mask = np.zeros((read_stop - read_start,) + x.shape[1:], dtype=np.uint8)
        slab_mask[start - read_start:stop - read_start] = mask_u8[start:stop]
        slab_pair = _pair_volume(x[read_start:read_stop], slab_mask, search_radius, patch_radius,
                                 bool(exclude_centre))
        pair[start:stop] = slab_pair[start - read_start:stop - read_start]
    return pair


def _pair_volume(x, mask_u8, search_radius, patch_radius, exclude_centre):
    """:func:`synthetic_pair` of a whole (validated, float32, C-ordered) volume."""
    best_value = x.copy()
    best_dist = np.full(x.shape, np.inf, dtype=np.float64)
    shape = np.array(x.shape, dtype=np.int64)
    box_lo, box_hi = _mask_box(mask_u8)
    # Anchors p needed for a displacement d: p or p + d in the mask box.
    need_lo = np.maximum(box_lo - search_radius, 0)
    need_hi = np.minimum(box_hi + search_radius, shape)
    for d in half_displacements(search_radius):
        # Anchors with both p and p + d inside the volume.
        lo = np.maximum(need_lo, -d)
        hi = np.minimum(need_hi, shape - d)
        if np.any(hi <= lo):
            continue
        planes = np.empty(
            (hi[0] - lo[0] + 2 * patch_radius, hi[1] - lo[1], hi[2] - lo[2]), dtype=np.float64
        )
        _box_sum_xy(x, d, patch_radius, lo, hi, planes)
        _update_best(
            x, planes, d, patch_radius, lo, hi, box_lo, box_hi, mask_u8,
            exclude_centre, best_dist, best_value,
        )
    return best_value


@njit(parallel=True, cache=True)
def _pair_at(x, points, displacements, radius, r, exclude_centre, out):
    """Per-voxel search at ``points`` with :func:`synthetic_pair`'s conventions.

    Each point's neighbourhood (search window plus patch, edge-replicated) is copied once;
    the distances of all candidates then grow together, one patch offset at a time (2x
    faster than a candidate at a time: no edge clamping in the inner loop, contiguous
    rows).  Each distance still sums the squared differences along x, then y, then z, as
    the box sums of :func:`_box_sum_xy` and :func:`_distance` do, so that every float64
    distance, hence every choice, is bit-identical to the volume-wide scheme (a candidate
    at ``-d`` has the anchor and partner of ``+d`` swapped: its differences change sign,
    not their squares).
    """
    nz, ny, nx = x.shape
    half = radius + r
    width = 2 * half + 1  # of the copied neighbourhood
    side = 2 * radius + 1  # of the search window
    for n in prange(points.shape[0]):
        vz, vy, vx = points[n, 0], points[n, 1], points[n, 2]
        window = np.empty(width * width * width, dtype=np.float64)
        k = 0
        for a in range(width):
            za = _clamp(vz + a - half, nz)
            for b in range(width):
                yb = _clamp(vy + b - half, ny)
                for c in range(width):
                    window[k] = x[za, yb, _clamp(vx + c - half, nx)]
                    k += 1
        # distance[(ez * side + ey) * side + ex]: candidate (ez, ey, ex) - radius.
        distance = np.zeros(side * side * side, dtype=np.float64)
        plane = np.empty(distance.size, dtype=np.float64)
        row = np.empty(distance.size, dtype=np.float64)
        for tz in range(2 * r + 1):
            plane[:] = 0.0
            for ty in range(2 * r + 1):
                row[:] = 0.0
                for tx in range(2 * r + 1):
                    anchor = window[((radius + tz) * width + radius + ty) * width + radius + tx]
                    for ez in range(side):
                        for ey in range(side):
                            start = ((tz + ez) * width + ty + ey) * width + tx
                            first = (ez * side + ey) * side
                            for ex in range(side):
                                diff = anchor - window[start + ex]
                                row[first + ex] += diff * diff
                for e in range(row.size):  # loops: array expressions would nest parfors
                    plane[e] += row[e]
            for e in range(plane.size):
                distance[e] += plane[e]
        centre = window[(half * width + half) * width + half]
        best = np.inf
        value = x[vz, vy, vx]
        for m in range(displacements.shape[0]):
            for sign in (1, -1):
                dz = sign * displacements[m, 0]
                dy = sign * displacements[m, 1]
                dx = sign * displacements[m, 2]
                cz, cy, cx = vz + dz, vy + dy, vx + dx
                if not (0 <= cz < nz and 0 <= cy < ny and 0 <= cx < nx):
                    continue
                acc = distance[((radius + dz) * side + radius + dy) * side + radius + dx]
                if exclude_centre:
                    diff = centre - window[((half + dz) * width + half + dy) * width + half + dx]
                    acc -= diff * diff
                if acc < best:
                    best = acc
                    value = x[cz, cy, cx]
        out[n] = value


def pair_values_at(
    x: np.ndarray,
    points: np.ndarray,
    *,
    search_radius: int = SEARCH_RADIUS,
    patch_radius: int = PATCH_RADIUS,
    exclude_centre: bool = False,
) -> np.ndarray:
    """Values of :func:`synthetic_pair` at some voxels only, bit-identical to the whole pair.

    For a noise estimate that reads the pair at a few per cent of the voxels, searching
    only there costs that fraction of the whole pair.

    Parameters
    ----------
    x : numpy.ndarray
        3D finite volume.
    points : numpy.ndarray
        ``(n, 3)`` integer voxel indices inside the volume.
    search_radius, patch_radius, exclude_centre
        As for :func:`synthetic_pair`.

    Returns
    -------
    numpy.ndarray
        float32 array of ``n`` values: ``synthetic_pair(x, ...)[tuple(points.T)]``.
    """
    x = real_volume(x, "pair_values_at")
    if int(search_radius) != search_radius or search_radius < 1:
        raise ValueError(f"search_radius must be an integer >= 1, got {search_radius!r}")
    if int(patch_radius) != patch_radius or patch_radius < 0:
        raise ValueError(f"patch_radius must be an integer >= 0, got {patch_radius!r}")
    points = np.ascontiguousarray(points, dtype=np.int64).reshape(-1, 3)
    if points.size and (points.min() < 0 or np.any(points.max(axis=0) >= np.array(x.shape))):
        raise ValueError("points must lie inside the volume")
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(points.shape[0], dtype=np.float32)
    _pair_at(x, points, half_displacements(int(search_radius)), int(search_radius),
             int(patch_radius), bool(exclude_centre), out)
    return out


class PairValues:
    """The synthetic pair of one volume, searched voxel by voxel where it is read.

    Values come from :func:`pair_values_at` (bit-identical to :func:`synthetic_pair`)
    and are remembered, so that several readers of one pair (the noise estimate, the
    local noise map and its calibration) search each voxel once.  Calling the object
    with flat voxel indices returns the pair's values there.

    Parameters
    ----------
    x : numpy.ndarray
        3D finite volume.
    search_radius, patch_radius, exclude_centre
        As for :func:`synthetic_pair`.
    """

    def __init__(self, x: np.ndarray, *, search_radius: int = SEARCH_RADIUS,
                 patch_radius: int = PATCH_RADIUS, exclude_centre: bool = False):
        self._x = np.ascontiguousarray(real_volume(x, "PairValues"), dtype=np.float32)
        self._settings = {"search_radius": search_radius, "patch_radius": patch_radius,
                          "exclude_centre": exclude_centre}
        self._values = np.empty(self._x.size, np.float32)
        self._known = np.zeros(self._x.size, bool)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._x.shape

    @property
    def searched(self) -> int:
        """How many voxels have been searched so far."""
        return int(self._known.sum())

    def __call__(self, flat_index: np.ndarray) -> np.ndarray:
        """float32 values of the pair at ``flat_index`` (indices into ``x.ravel()``)."""
        flat_index = np.asarray(flat_index, dtype=np.int64)
        missing = np.unique(flat_index[~self._known[flat_index]])
        if missing.size:
            points = np.stack(np.unravel_index(missing, self.shape), axis=1)
            self._values[missing] = pair_values_at(self._x, points, **self._settings)
            self._known[missing] = True
        return self._values[flat_index]
