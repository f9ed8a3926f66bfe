"""Collaborative Wiener filtering guided by a pilot estimate (the second step of BM4D).

Given the noisy volume ``x`` and a pilot estimate ``p`` of its noise-free signal (here the
CNN + RI-NLM output), every reference block of ``B**3`` voxels on a grid of step ``step``
is grouped with the ``group_size`` blocks of its search window most similar to it *in the
pilot*; the group of noisy blocks is transformed (orthonormal 3D DCT of each block, then
an orthonormal Haar transform across the group, as BM3D's), each coefficient is multiplied by
the empirical Wiener gain ``P**2 / (P**2 + sigma**2)`` where ``P`` is the same coefficient of
the pilot's group, and the group is transformed back.  Every block estimate is aggregated into the output with
the weight ``1 / (sigma**2 * sum(gain**2))`` (the inverse of the estimate's noise variance,
Dabov et al. 2007).  Voxels no block covers keep the pilot.

The pilot supplies what to keep; the noisy data supplies the values.  Where the pilot has
smoothed away texture that the data still holds above the noise, the gain is close to 1 and
the texture comes back; where the pilot is flat, the noise is shrunk as the pilot says.

With ``keep_pilot_mean`` the mean of every block is the pilot's: only the zero-mean part of
the blocks is re-estimated from the data.  The mean of a magnitude image carries the Rician
bias at low SNR, which the pilot (RI-NLM with its bias correction) has already removed.

Parallelism and determinism: reference planes are split into slabs thicker than the span a
slab's blocks can write to; even slabs run in parallel, then odd ones, so no two threads
write the same voxel and every voxel sums its contributions in the same order whatever the
number of threads.  Under a memory budget the output is written in slabs of planes, each
running only the reference slabs that reach it (in the same even-then-odd order) into
accumulators of their extent: the same sums in the same order, so the same result.

References
----------
.. [1] Dabov K, Foi A, Katkovnik V, Egiazarian K (2007). Image denoising by sparse 3-D
   transform-domain collaborative filtering. IEEE TIP 16(8):2080-2095.
.. [2] Maggioni M, Katkovnik V, Egiazarian K, Foi A (2013). Nonlocal transform-domain
   filter for volumetric data denoising and reconstruction. IEEE TIP 22(1):119-133.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import memory
from ._checks import real_volume

#: Block edge (voxels): BM4D's 4x4x4 blocks.
BLOCK = 4
#: Blocks per group (a power of two: the group transform is a Haar transform).
GROUP_SIZE = 8
_INV_SQRT2 = 1.0 / np.sqrt(2.0)
#: Half-width of the block-matching window (block corners within +-radius voxels).  Radius 3
#: against 2 in the final-stage study (3 and 7 % noise): +0.07 to +0.46 dB on its three
#: synthetic objects with a known truth, +0.00 to +0.01 dB on the two real scans, 1.5 x the
#: stage's time (docs/final-stage.md); radius 4 at step 3 lost 0.06 dB on the real scans.
SEARCH_RADIUS = 3
#: Spacing of the reference blocks (voxels).
STEP = 2
#: Reference-block spacing of each pass of the pipeline's Wiener stage
#: (:func:`~.pipeline.final_image`): every pass takes the previous pass's output as its pilot.
#: One pass.  A second (steps 3 then 2) gained 0.2-0.4 dB on real scans scored against
#: themselves but cost 0.01-0.21 dB on every synthetic object with a known truth, removed
#: 6-13 % less residual on the real scans (what a reference holding its own noise rewards) and
#: raised the structure-removed QC measure of the test dataset's outputs above its flag
#: (docs/final-stage.md).
PASS_STEPS = (STEP,)


def dct_matrix(size: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (``D @ v`` transforms ``v``; ``D.T`` inverts)."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


def reference_positions(size: int, block: int, step: int) -> np.ndarray:
    """Block corners ``0, step, 2 step, ...`` along one axis, the last at ``size - block``."""
    last = size - block
    positions = list(range(0, last + 1, step))
    if positions[-1] != last:
        positions.append(last)
    return np.asarray(positions, dtype=np.int64)


@njit(cache=True, fastmath=True)
def _transform_block(block, d, out, tmp):
    """3D separable transform of a flat ``B**3`` block by the matrix ``d`` (B x B).

    Three times: transform the leading axis (rows of ``B**2`` contiguous values, which
    vectorize), then rotate the axes (z, y, x) -> (y, x, z); after the third rotation the
    layout is the original one.
    """
    b = d.shape[0]
    plane = b * b
    n3 = plane * b
    for n in range(n3):
        out[n] = block[n]
    for _ in range(3):
        for n in range(n3):
            tmp[n] = 0.0
        for i in range(b):
            for t in range(b):
                w = d[i, t]
                for n in range(plane):
                    tmp[i * plane + n] += w * out[t * plane + n]
        for a in range(b):
            for c in range(plane):
                out[c * b + a] = tmp[a * plane + c]


@njit(cache=True, fastmath=True)
def _match(pilot, z0, nz, zr, yr, xr, b, group, radius, reference, best_z, best_y, best_x,
           best_d):
    """The ``group`` blocks of the window closest to the reference block in the pilot.

    ``pilot`` holds planes ``z0 ...`` of a volume of ``nz`` planes; ``zr`` and the block
    corners found are planes of the whole volume.  Candidates are visited in (z, y, x)
    order and a later one replaces a kept one only if strictly closer, so ties go to the
    first found.  A candidate's distance stops accumulating once it exceeds the current
    ``group``-th best (it could not enter).
    """
    ny, nx = pilot.shape[1], pilot.shape[2]
    for g in range(group):
        best_d[g] = np.inf
    for cz in range(max(zr - radius, 0), min(zr + radius, nz - b) + 1):
        for cy in range(max(yr - radius, 0), min(yr + radius, ny - b) + 1):
            for cx in range(max(xr - radius, 0), min(xr + radius, nx - b) + 1):
                worst = best_d[group - 1]
                dist = 0.0
                for i in range(b):
                    for j in range(b):
                        for k in range(b):
                            diff = (reference[(i * b + j) * b + k]
                                    - pilot[cz - z0 + i, cy + j, cx + k])
                            dist += diff * diff
                    if dist >= worst:
                        break
                if dist < worst:
                    g = group - 1
                    while g > 0 and best_d[g - 1] > dist:
                        best_d[g] = best_d[g - 1]
                        best_z[g] = best_z[g - 1]
                        best_y[g] = best_y[g - 1]
                        best_x[g] = best_x[g - 1]
                        g -= 1
                    best_d[g] = dist
                    best_z[g] = cz
                    best_y[g] = cy
                    best_x[g] = cx


@njit(cache=True, fastmath=True)
def _haar_forward(a, tmp):
    """Orthonormal Haar transform of the rows of ``a`` (a power of two of them), in place.

    Levels from the finest: each pair of rows becomes its scaled sum and difference; the sums
    go on to the next level.
    """
    n = a.shape[1]
    length = a.shape[0]
    while length > 1:
        half = length // 2
        for p in range(half):
            for c in range(n):
                first = a[2 * p, c]
                second = a[2 * p + 1, c]
                tmp[p, c] = (first + second) * _INV_SQRT2
                tmp[half + p, c] = (first - second) * _INV_SQRT2
        for q in range(length):
            for c in range(n):
                a[q, c] = tmp[q, c]
        length = half


@njit(cache=True, fastmath=True)
def _haar_inverse(a, tmp):
    """Inverse of :func:`_haar_forward`, in place."""
    n = a.shape[1]
    length = 2
    while length <= a.shape[0]:
        half = length // 2
        for p in range(half):
            for c in range(n):
                total = a[p, c]
                difference = a[half + p, c]
                tmp[2 * p, c] = (total + difference) * _INV_SQRT2
                tmp[2 * p + 1, c] = (total - difference) * _INV_SQRT2
        for q in range(length):
            for c in range(n):
                a[q, c] = tmp[q, c]
        length *= 2


@njit(cache=True, fastmath=True)
def _filter_reference(x, pilot, z0, nz, sigma2, zr, yr, xr, b, group, radius, d1, d1t,
                      keep_mean, num, den, work):
    """Group, filter and aggregate the blocks of one reference block (``x``, ``pilot``,
    ``num`` and ``den`` hold planes ``z0 ...`` of the ``nz`` of the volume)."""
    (best_z, best_y, best_x, best_d, reference, flat, noisy_coef, pilot_coef, estimate,
     group_tmp, pilot_mean, scratch) = work
    n3 = b * b * b
    for i in range(b):
        for j in range(b):
            for k in range(b):
                reference[(i * b + j) * b + k] = pilot[zr - z0 + i, yr + j, xr + k]
    _match(pilot, z0, nz, zr, yr, xr, b, group, radius, reference, best_z, best_y, best_x,
           best_d)
    for g in range(group):
        best_z[g] -= z0  # planes of the arrays from here on
    # 3D transforms of the noisy and pilot blocks.
    for g in range(group):
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    flat[(i * b + j) * b + k] = x[best_z[g] + i, best_y[g] + j, best_x[g] + k]
        _transform_block(flat, d1, noisy_coef[g], scratch)
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    flat[(i * b + j) * b + k] = pilot[best_z[g] + i, best_y[g] + j, best_x[g] + k]
        _transform_block(flat, d1, pilot_coef[g], scratch)
    # Haar transform across the group, Wiener gains, back (the block means kept aside).
    for g in range(group):
        pilot_mean[g] = pilot_coef[g, 0]
    _haar_forward(noisy_coef, group_tmp)
    _haar_forward(pilot_coef, group_tmp)
    gain_energy = 0.0
    for g in range(group):
        for c in range(n3):
            power = pilot_coef[g, c] * pilot_coef[g, c]
            gain = power / (power + sigma2)
            gain_energy += gain * gain
            estimate[g, c] = gain * noisy_coef[g, c]
    _haar_inverse(estimate, group_tmp)
    if keep_mean:
        for g in range(group):
            estimate[g, 0] = pilot_mean[g]
    weight = 1.0 / (sigma2 * max(gain_energy, 1.0))
    for g in range(group):
        _transform_block(estimate[g], d1t, flat, scratch)
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    num[best_z[g] + i, best_y[g] + j, best_x[g] + k] += weight * flat[(i * b + j) * b + k]
                    den[best_z[g] + i, best_y[g] + j, best_x[g] + k] += weight


@njit(parallel=True, cache=True)
def _filter_slabs(x, pilot, z0, nz, ref_sigma, ref_z, ref_y, ref_x, slab_starts, first, last,
                  parity, b, group, radius, d1, d1t, keep_mean, num, den):
    """Reference slabs ``first ... last`` of parity ``parity`` (slab index modulo 2), in
    parallel; the arrays hold planes ``z0 ...`` of the ``nz`` of the volume."""
    first_mine = first + (first + parity) % 2
    n_mine = (last - first_mine) // 2 + 1 if last >= first_mine else 0
    n3 = b * b * b
    for s in prange(n_mine):
        slab = first_mine + 2 * s
        # Scratch buffers, allocated once per slab.
        work = (np.empty(group, dtype=np.int64), np.empty(group, dtype=np.int64),
                np.empty(group, dtype=np.int64), np.empty(group), np.empty(n3), np.empty(n3),
                np.empty((group, n3)), np.empty((group, n3)),
                np.empty((group, n3)), np.empty((group, n3)), np.empty(group), np.empty(n3))
        for iz in range(slab_starts[slab], slab_starts[slab + 1]):
            zr = ref_z[iz]
            for iy in range(ref_y.shape[0]):
                yr = ref_y[iy]
                for ix in range(ref_x.shape[0]):
                    xr = ref_x[ix]
                    sigma = ref_sigma[iz, iy, ix]
                    if sigma <= 0:  # no noise there, or outside the mask
                        continue
                    _filter_reference(x, pilot, z0, nz, np.float64(sigma) ** 2, zr, yr, xr, b,
                                      group, radius, d1, d1t, keep_mean, num, den, work)


def _blocks_touching(mask: np.ndarray, corners: list, block: int) -> np.ndarray:
    """Whether the block at each corner of the grid ``corners`` holds a voxel of ``mask``."""
    table = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64)
    table[1:, 1:, 1:] = mask.cumsum(0).cumsum(1).cumsum(2)
    z, y, x = np.ix_(*corners)
    total = (table[z + block, y + block, x + block] - table[z, y + block, x + block]
             - table[z + block, y, x + block] - table[z + block, y + block, x]
             + table[z, y, x + block] + table[z, y + block, x] + table[z + block, y, x]
             - table[z, y, x])
    return np.ascontiguousarray(total > 0)


def collaborative_wiener(
    x: np.ndarray,
    pilot: np.ndarray,
    sigma,
    *,
    block: int = BLOCK,
    group_size: int = GROUP_SIZE,
    search_radius: int = SEARCH_RADIUS,
    step: int = STEP,
    keep_pilot_mean: bool = True,
    mask: np.ndarray | None = None,
    slab_planes: int | None = None,
) -> np.ndarray:
    """Collaborative (grouped) empirical Wiener filter of ``x`` with the pilot ``pilot``.

    Parameters
    ----------
    x : numpy.ndarray
        Noisy 3D volume.
    pilot : numpy.ndarray
        Estimate of the noise-free ``x`` (same shape); it steers the block matching and
        sets the Wiener gains.
    sigma : float or numpy.ndarray
        Noise standard deviation (image units), or a map of it (same shape; the value at a
        reference block's centre is used for its group).  Where it is 0 nothing is filtered.
    block : int
        Block edge in voxels.
    group_size : int
        Blocks per group (the reference block itself and the most similar others), a power
        of two.  A Haar group transform scored as a DCT one on the held-out real scan (within
        0.006 dB at 3 and 7 %) at fewer operations.
    search_radius : int
        Half-width of the block-matching window.
    step : int
        Spacing of the reference blocks.
    keep_pilot_mean : bool
        Take every block's mean from the pilot (see the module notes).
    mask : numpy.ndarray of bool, optional
        Only reference blocks that overlap the mask are filtered; voxels no block covers
        keep the pilot.
    slab_planes : int, optional
        Write slabs of this many planes along axis 0, each with accumulators only for the
        planes its reference blocks reach, so that memory follows the slab, not the
        volume; the result is identical.  Default: from the memory budget
        (:func:`~.memory.slab_planes`), the whole volume without one.

    Returns
    -------
    numpy.ndarray
        float32 volume.  Deterministic, independent of the number of threads.
    """
    x = real_volume(x, "collaborative_wiener").astype(np.float32, copy=False)
    pilot = real_volume(pilot, "collaborative_wiener pilot").astype(np.float32, copy=False)
    if pilot.shape != x.shape:
        raise ValueError(f"pilot shape {pilot.shape} differs from volume shape {x.shape}")
    for name, value, low in (("block", block, 1), ("group_size", group_size, 1),
                             ("search_radius", search_radius, 0), ("step", step, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    block, group_size, search_radius, step = int(block), int(group_size), int(search_radius), int(step)
    if group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two, got {group_size}")
    if min(x.shape) < block:
        raise ValueError(f"volume {x.shape} is smaller than a {block}-voxel block")
    if (2 * search_radius + 1) ** 3 < group_size:
        raise ValueError(f"a search radius of {search_radius} has fewer than {group_size} blocks")
    sigma_map = np.broadcast_to(np.asarray(sigma, dtype=np.float32), x.shape)
    if not np.all(np.isfinite(sigma_map)) or np.any(sigma_map < 0):
        raise ValueError("sigma must be finite and >= 0")
    if not np.any(sigma_map > 0):
        return pilot.copy()
    ref = [reference_positions(n, block, step) for n in x.shape]
    # sigma at each reference block's centre; 0 where the block misses the mask (skipped)
    ref_sigma = np.ascontiguousarray(sigma_map[np.ix_(*(r + block // 2 for r in ref))])
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {mask.shape} differs from volume shape {x.shape}")
        ref_sigma[~_blocks_touching(mask, ref, block)] = 0
    # Slabs of reference planes thick enough that blocks of slabs two apart never overlap.
    span = 2 * search_radius + block
    starts = [0]
    for index in range(1, ref[0].size):
        if ref[0][index] - ref[0][starts[-1]] >= span:
            starts.append(index)
    starts.append(ref[0].size)
    slab_starts = np.asarray(starts, dtype=np.int64)
    nz = x.shape[0]
    # planes each reference slab writes: its blocks' corners lie within +-search_radius
    writes = [(max(int(ref[0][a]) - search_radius, 0),
               min(int(ref[0][b_ - 1]) + search_radius + block, nz))
              for a, b_ in zip(starts[:-1], starts[1:])]
    if slab_planes is None:
        halo = max(stop - start for start, stop in writes)
        slab_planes = memory.slab_planes(x.shape, bytes_per_voxel=memory.WIENER_BYTES_PER_VOXEL,
                                         halo=halo)
    d1 = dct_matrix(block)
    d1t = np.ascontiguousarray(d1.T)
    out = np.empty(x.shape, dtype=np.float32)
    for start, stop, _, _ in memory.slabs(nz, slab_planes, 0):
        # Every reference slab that writes to these planes runs, even ones before odd ones
        # as over the whole volume, so each voxel sums the same terms in the same order:
        # the result is bit for bit the whole-volume one.
        touching = [k for k, (a, b_) in enumerate(writes) if a < stop and b_ > start]
        first, last = touching[0], touching[-1]
        z0, z1 = writes[first][0], max(b_ for _, b_ in writes[first:last + 1])
        num = np.zeros((z1 - z0,) + x.shape[1:], dtype=np.float64)
        den = np.zeros_like(num)
        for parity in (0, 1):
            _filter_slabs(x[z0:z1], pilot[z0:z1], z0, nz, ref_sigma, ref[0], ref[1], ref[2],
                          slab_starts, first, last, parity, block, group_size, search_radius,
                          d1, d1t, bool(keep_pilot_mean), num, den)
        for z in range(start, stop):  # plane by plane: no temporary of the slab's size
            plane_num, plane_den = num[z - z0], den[z - z0]
            covered = plane_den > 0  # voxels no block covers keep the pilot
            np.divide(plane_num, plane_den, out=plane_num, where=covered)
            out[z] = np.where(covered, plane_num, pilot[z])
    return out
