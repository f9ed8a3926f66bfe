"""Guided rotationally invariant non-local means (RI-NLM).

Auto-N2N fuses the CNN output with an RI-NLM filter of the noisy volume that uses the
CNN output as its guide (paper, section 2.5), as PRI-NLM / PRI-NLPCA do with their
pre-filtered guide.

Formulation (Manjón et al. 2012, PRI-NLM; as in the authors' C code, but in float
arithmetic: their code truncates ``|dmu|`` to an integer, we do not). There is no patch:
each voxel is described by two rotationally invariant features of the guide ``g``,
its value and its 3x3x3 local mean ``mu``. With ``h = sigma / 3``, voxel ``i`` and
each candidate ``j`` of the ``(2r+1)^3`` search window centred on ``i``:

* ``j`` is skipped if ``|mu_i - mu_j| > h``;
* ``d = 0.5 max(dg^2 / (2 h^2) - 1, 0) + 0.5 max(dmu^2 / (h^2 / 2) - 1, 0)``;
* ``w = exp(-d)`` (so ``w = 1`` for ``d <= 0``), and ``w = 0`` for ``d > 10``;
* the voxel itself is a candidate with ``d = 0``, so its own weight is 1.

The NOISY volume ``x`` is averaged with these weights: ``x`` itself for Gaussian
noise, ``x^2`` for Rician noise, which is then bias-corrected as
``sqrt(max(<x^2> - 2 sigma^2, 0))`` (Manjón et al. 2008).

Spatially varying noise: ``sigma`` may be a map (one value per voxel, e.g. from
:mod:`~bids_auton2n.denoise.noisemap`); voxel ``i`` is then filtered with its own
``h_i = sigma_i / 3`` in every test above and bias-corrected with its own ``2 sigma_i^2``
(Manjón et al. 2010 do the same with a local noise estimate in their adaptive NLM).

As the authors do, ``x``, the guide and ``sigma`` are put on a 0-255 scale (the largest
``|x|`` or ``|g|`` -> 255) before ``h`` is computed, and the result is scaled back.
Every test above compares an intensity difference with ``h``, so in float arithmetic
the result does not depend on that scale; it keeps ``x^2`` and ``1 / h^2`` within
float32 range whatever the image units.

Boundary rule: candidates outside the volume are skipped; the 3x3x3 local mean at the
border is the mean of the neighbours that lie inside the volume.

Implementation: a gather scheme, race-free by construction. ``prange`` runs over tiles
(one z-plane by ``_TILE_ROWS`` rows); each tile owns its output voxels and accumulates
its weight and value sums in private buffers, looping over the search offsets with a
contiguous, vectorised (fastmath, float32) innermost loop over x. A tile reads an
11-plane by (``_TILE_ROWS`` + 10)-row band of three float32 arrays (~0.7 MB for a
200-voxel-wide volume), which stays in L2. The exponential is a branch-free polynomial
(``_exp_neg``) because numba has no vectorised ``exp`` without SVML. Only the span
between the first and last mask voxel of each row is computed. Each voxel's sums are
accumulated in the same order whatever the thread count, so results are bit-identical
for any number of threads.

Not used, measured: the symmetric Darbon offset loop (half the offsets, both voxels of
a pair updated, race-free by two-colouring z-slabs at least ``r`` thick). With the
vectorised exponential the weight costs about as much as the two extra read-modify-write
accumulations it saves, and it took ~25 % more CPU time than this gather scheme on the
development machine (AMD EPYC, AVX-512), besides doubling the accumulator memory.

References
----------
Manjón JV, Coupé P, Buades A, Collins DL, Robles M (2012). New methods for MRI
denoising based on sparseness and self-similarity. Medical Image Analysis 16:18-27.
Manjón JV, Carbonell-Caballero J, Lull JJ, García-Martí G, Martí-Bonmatí L, Robles M
(2008). MRI denoising using non-local means. Medical Image Analysis 12:514-523.
Darbon J, Cunha A, Chan TF, Osher S, Jensen GJ (2008). Fast nonlocal filtering applied
to electron cryomicroscopy. ISBI 2008: 1331-1334 (offset loop; see "Not used").
Manjón JV, Coupé P, Martí-Bonmatí L, Collins DL, Robles M (2010). Adaptive non-local
means denoising of MR images with spatially varying noise levels. JMRI 31:192-203.
"""

from __future__ import annotations

import numbers

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import memory
from ._checks import real_volume

__all__ = ["ri_nlm"]

_F32 = np.float32
_ZERO, _HALF, _ONE = _F32(0.0), _F32(0.5), _F32(1.0)
_MAX_DISTANCE = _F32(10.0)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LOG2E = _F32(1.4426950408889634)
# Cody-Waite split of ln 2: n * _LN2_HI is exact in float32 for the small n used here.
_LN2_HI = _F32(0.693359375)
_LN2_LO = _F32(-2.12194440e-4)
_INV_FACT = tuple(_F32(1.0 / f) for f in (2, 6, 24, 120, 720, 5040))

# Rows of output per parallel work item (see module docstring for the cache budget).
_TILE_ROWS = 16


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bits are the low 32 bits of an integer (LLVM bitcast)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low_bits = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low_bits, context.get_value_type(types.float32))

    return types.float32(bits), codegen


@njit(fastmath=True, cache=True)
def _exp_neg(d):
    """``exp(-d)`` in float32 for ``0 <= d <= 80``, branch-free so loops vectorise.

    ``d = n ln2 + r`` with integer ``n`` and ``|r| <= ln2 / 2``: ``exp(-r)`` by a
    degree-7 Taylor polynomial (relative error < 1e-7) times ``2^-n`` built from its
    IEEE-754 bits (numba has no vectorised ``exp`` without Intel SVML).
    """
    n = np.floor(d * _LOG2E + _HALF)
    u = n * _LN2_HI - d + n * _LN2_LO  # u = -r
    c2, c3, c4, c5, c6, c7 = _INV_FACT
    p = _ONE + u * (_ONE + u * (c2 + u * (c3 + u * (c4 + u * (c5 + u * (c6 + u * c7))))))
    return p * _float32_from_bits((127 - np.int32(n)) << 23)


@njit(fastmath=True, cache=True)
def _weight(d_g, d_mu, h, inv_2h2, inv_half_h2):
    """Weight of a candidate whose guide and local mean differ by ``d_g`` and ``d_mu``."""
    d = _HALF * max(d_g * d_g * inv_2h2 - _ONE, _ZERO) + _HALF * max(
        d_mu * d_mu * inv_half_h2 - _ONE, _ZERO
    )
    keep = (abs(d_mu) <= h) & (d <= _MAX_DISTANCE)
    # Clamped so huge (or overflowing) distances cannot reach _exp_neg.
    return _exp_neg(min(d, _MAX_DISTANCE)) if keep else _ZERO


@njit(fastmath=True, cache=True)
def _accumulate_row(g_i, mu_i, g_j, mu_j, v_j, weight_sum, value_sum, h, inv_2h2, inv_half_h2):
    """Add the weights of one candidate row ``j`` to the sums of output row ``i``.

    All arguments are equal-length contiguous slices so the loop index is plain and
    non-negative, which lets LLVM vectorise it.
    """
    for k in range(weight_sum.shape[0]):
        w = _weight(g_i[k] - g_j[k], mu_i[k] - mu_j[k], h, inv_2h2, inv_half_h2)
        weight_sum[k] += w
        value_sum[k] += w * v_j[k]


@njit(fastmath=True, cache=True)
def _accumulate_row_map(g_i, mu_i, h_i, inv_2h2_i, g_j, mu_j, v_j, weight_sum, value_sum):
    """:func:`_accumulate_row` where each output voxel has its own ``h`` (a sigma map).

    A loop of its own: the two extra arrays cost vectorisation (LLVM's run-time aliasing
    checks), measured ~30 % slower, which the one-sigma case does not pay.  ``2 / h^2`` is
    ``4 / (2 h^2)``, exactly (a power-of-two factor).
    """
    four = _F32(4.0)
    for k in range(weight_sum.shape[0]):
        inv = inv_2h2_i[k]
        w = _weight(g_i[k] - g_j[k], mu_i[k] - mu_j[k], h_i[k], inv, four * inv)
        weight_sum[k] += w
        value_sum[k] += w * v_j[k]


@njit(fastmath=True, cache=True)
def _inverse_2h2(h):
    """``1 / (2 h^2)`` clamped to a finite float32 (0 * inf would make a weight NaN), and
    to a quarter of that so that ``2 / h^2 = 4 / (2 h^2)`` stays finite too."""
    return _F32(min(1.0 / (2.0 * h * h), _FLOAT32_MAX / 4.0))


@njit(parallel=True, fastmath=True, cache=True)
def _weighted_average(guide, local_mean, values, row_start, row_stop, radius, radius_z, h, h_map):
    """Weighted average of ``values`` over each voxel's search window.

    ``h`` is the filtering parameter of every voxel, or, when ``h_map`` has the volume's
    shape, ``h_map`` gives each output voxel its own.  The window is ``radius`` in-plane and
    ``radius_z`` across planes (0: each plane on its own).  Only ``[row_start[z, y],
    row_stop[z, y])`` of each row is computed; the rest of the returned float64 array is 0.
    """
    nz, ny, nx = guide.shape
    uniform = h_map.shape != guide.shape
    # Clamped to a finite float32: 0 * inf would make the voxel's own weight NaN.
    inv_2h2 = _F32(min(1.0 / (2.0 * h * h), _FLOAT32_MAX)) if uniform else _ZERO
    inv_half_h2 = _F32(min(2.0 / (h * h), _FLOAT32_MAX)) if uniform else _ZERO
    h32 = _F32(h)
    n_row_blocks = (ny + _TILE_ROWS - 1) // _TILE_ROWS
    average = np.zeros((nz, ny, nx), np.float64)
    # z varies fastest so consecutive tiles of one thread share most of their input band.
    for tile in prange(nz * n_row_blocks):
        y_block = tile // nz
        z = tile - y_block * nz
        y0 = y_block * _TILE_ROWS
        y1 = min(ny, y0 + _TILE_ROWS)
        if np.all(row_stop[z, y0:y1] <= row_start[z, y0:y1]):
            continue
        weight_sum = np.zeros((y1 - y0, nx), np.float32)
        value_sum = np.zeros((y1 - y0, nx), np.float32)
        # With a sigma map, the tile's own h and 1 / (2 h^2): small buffers that the inner
        # loop reads from cache.
        buffer_shape = (1, 1) if uniform else (y1 - y0, nx)
        h_tile = np.empty(buffer_shape, np.float32)
        inv_2h2_tile = np.empty(buffer_shape, np.float32)
        if not uniform:
            for y in range(y0, y1):
                for x in range(nx):
                    h_tile[y - y0, x] = _F32(h_map[z, y, x])
                    inv_2h2_tile[y - y0, x] = _inverse_2h2(h_map[z, y, x])
        for dz in range(-radius_z, radius_z + 1):
            zj = z + dz
            if zj < 0 or zj >= nz:
                continue
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    for y in range(y0, y1):
                        yj = y + dy
                        if yj < 0 or yj >= ny:
                            continue
                        x0 = max(row_start[z, y], -dx)
                        x1 = min(row_stop[z, y], nx - dx)
                        if x1 <= x0:
                            continue
                        if uniform:
                            _accumulate_row(
                                guide[z, y, x0:x1],
                                local_mean[z, y, x0:x1],
                                guide[zj, yj, x0 + dx : x1 + dx],
                                local_mean[zj, yj, x0 + dx : x1 + dx],
                                values[zj, yj, x0 + dx : x1 + dx],
                                weight_sum[y - y0, x0:x1],
                                value_sum[y - y0, x0:x1],
                                h32,
                                inv_2h2,
                                inv_half_h2,
                            )
                        else:
                            _accumulate_row_map(
                                guide[z, y, x0:x1],
                                local_mean[z, y, x0:x1],
                                h_tile[y - y0, x0:x1],
                                inv_2h2_tile[y - y0, x0:x1],
                                guide[zj, yj, x0 + dx : x1 + dx],
                                local_mean[zj, yj, x0 + dx : x1 + dx],
                                values[zj, yj, x0 + dx : x1 + dx],
                                weight_sum[y - y0, x0:x1],
                                value_sum[y - y0, x0:x1],
                            )
        for y in range(y0, y1):
            for x in range(row_start[z, y], row_stop[z, y]):
                # The voxel's own weight is 1, so the denominator is >= 1.
                average[z, y, x] = np.float64(value_sum[y - y0, x]) / weight_sum[y - y0, x]
    return average


def _local_mean_3x3x3(volume, axes=(0, 1, 2)):
    """3x3x3 mean over the neighbours inside the volume (float64 sums, float32 out); only
    along ``axes`` (``(1, 2)``: the 3x3 mean within each plane)."""
    total = volume.astype(np.float64)
    count = np.ones(1)
    for axis, length in enumerate(volume.shape):
        if axis not in axes:
            count = np.multiply.outer(count, np.ones(length))
            continue
        before = [slice(None)] * 3
        after = [slice(None)] * 3
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        shifted_sum = total.copy()
        shifted_sum[tuple(after)] += total[tuple(before)]
        shifted_sum[tuple(before)] += total[tuple(after)]
        total = shifted_sum
        neighbours = np.full(length, 3.0)
        neighbours[0] -= 1.0  # for length 1 both edges fall on one voxel: 1 neighbour
        neighbours[-1] -= 1.0
        count = np.multiply.outer(count, neighbours)
    return (total / count.reshape(volume.shape)).astype(np.float32)


def _mask_row_spans(mask):
    """Per-row ``[start, stop)`` x-span covering the mask's voxels (empty rows: 0, 0)."""
    nx = mask.shape[2]
    any_voxel = mask.any(axis=2)
    start = np.where(any_voxel, np.argmax(mask, axis=2), 0)
    stop = np.where(any_voxel, nx - np.argmax(mask[:, :, ::-1], axis=2), 0)
    return np.ascontiguousarray(start, np.int64), np.ascontiguousarray(stop, np.int64)


def _sigma_map(sigma, shape) -> np.ndarray | None:
    """``None`` for one noise level (checked), else the validated float64 map."""
    if np.ndim(sigma) == 0:
        try:
            value = float(sigma)
        except (TypeError, ValueError):
            raise ValueError(f"ri_nlm: sigma must be a number or a map, got {sigma!r}") from None
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"ri_nlm: sigma must be finite and >= 0, got {value}")
        return None
    sigma_map = real_volume(sigma, "ri_nlm", "sigma", shape=shape, finite=False)
    sigma_map = sigma_map.astype(np.float64)
    if not (np.isfinite(sigma_map).all() and (sigma_map >= 0).all()):
        raise ValueError("ri_nlm: sigma must be finite and >= 0 in every voxel of the map")
    return sigma_map


def ri_nlm(x, guide, sigma, *, search_radius=5, rician=True, mask=None, in_plane=False,
           slab_planes=None):
    """Guided rotationally invariant NLM filter of a noisy volume.

    Parameters
    ----------
    x : (nz, ny, nx) array_like
        Noisy volume (any real dtype), finite.
    guide : (nz, ny, nx) array_like
        Guide image, e.g. the CNN output, same shape, finite. Only the weights use it.
    sigma : float or (nz, ny, nx) array_like
        Noise standard deviation of ``x`` in the units of ``x`` (Gaussian sigma of the
        underlying complex data for Rician noise), one value for the volume or a map
        (spatially varying noise, :mod:`~bids_auton2n.denoise.noisemap`): each voxel is
        then filtered with its own ``h = sigma / 3`` and bias-corrected with its own
        ``2 sigma^2``. Where ``sigma == 0`` the output is a float32 copy of ``x``.
    search_radius : int, optional
        Half-width of the cubic search window, default 5 (11^3 candidates).
    rician : bool, optional
        Average ``x^2`` and remove the Rician bias ``2 sigma^2`` (default); otherwise
        average ``x``.
    mask : (nz, ny, nx) array_like of bool, optional
        Voxels to filter; outside the mask the output is ``x``. Candidates are taken
        from the whole volume.
    in_plane : bool, optional
        Filter each plane ``x[i]`` on its own (search window and local means within the
        plane), as ``ri_nlm(x[i:i+1], ...)`` one plane at a time would, in one call.
    slab_planes : int, optional
        Filter slabs of this many planes along axis 0, each read with a halo of
        ``search_radius + 1`` planes, so that memory follows the slab, not the volume;
        the result is identical. Default: from the memory budget
        (:mod:`~bids_auton2n.denoise.memory`), the whole volume without one.

    Returns
    -------
    numpy.ndarray
        float32 filtered volume, same shape as ``x``.

    Raises
    ------
    ValueError
        On a non-3D or non-real input, mismatched shapes, non-finite values (callers
        sanitize first, see ``intensity.sanitize``), a negative or non-finite ``sigma``
        (any voxel of a map) or a negative or non-integer ``search_radius``.

    Notes
    -----
    See the module docstring for the weights and the boundary rule. References:
    Manjón et al. (2012), Medical Image Analysis 16:18-27.
    """
    x = real_volume(x, "ri_nlm")
    guide = real_volume(guide, "ri_nlm", "guide", shape=x.shape)
    if isinstance(search_radius, bool) or not isinstance(search_radius, numbers.Integral):
        raise ValueError(f"ri_nlm: search_radius must be an integer, got {search_radius!r}")
    if search_radius < 0:
        raise ValueError(f"ri_nlm: search_radius must be >= 0, got {search_radius}")
    sigma_map = _sigma_map(sigma, x.shape)
    if sigma_map is None:
        sigma = float(sigma)
    if mask is not None:
        mask = real_volume(mask, "ri_nlm", "mask", shape=x.shape, finite=False).astype(bool)
    x = np.ascontiguousarray(x, dtype=np.float32)
    guide = np.ascontiguousarray(guide, dtype=np.float32)

    output = x.copy()
    if sigma_map is not None:
        # Voxels without noise are returned as they are, like a whole volume with sigma 0.
        mask = (sigma_map > 0) if mask is None else (mask & (sigma_map > 0))
        sigma = 0.0 if not mask.any() else float(sigma_map[mask].max())
    if sigma == 0 or x.size == 0 or (mask is not None and not mask.any()):
        return output

    if mask is None:
        row_start = np.zeros(x.shape[:2], np.int64)
        row_stop = np.full(x.shape[:2], x.shape[2], np.int64)
    else:
        row_start, row_stop = _mask_row_spans(mask)
    # The authors' 0-255 scale; it also keeps x^2 and 1/h^2 within float32 range.  Taken
    # over the whole volume, so that every slab below uses the same one.
    image_max = max(float(x.max()), -float(x.min()), float(guide.max()), -float(guide.min()))
    scale = 255.0 / image_max if image_max > 0 else 1.0
    # Floor only reached when sigma is < 1e-38 of the image maximum.
    tiny = float(np.finfo(np.float32).tiny)
    if sigma_map is None:
        scaled_sigma = sigma * scale
        h, h_map = max(scaled_sigma / 3.0, tiny), np.zeros((1, 1, 1))
    else:  # the map's float64 copies are made slab by slab (memory)
        h = 0.0
    radius_z = 0 if in_plane else int(search_radius)
    # A voxel's weights read the guide and its 3x3x3 mean within radius_z planes, that mean
    # the guide one plane further: with that halo a slab gives the whole volume's result bit
    # for bit (same sums, same order; the volume's edges stay where they are).
    halo = 0 if in_plane else int(search_radius) + 1
    if slab_planes is None:
        slab_planes = memory.slab_planes(x.shape, bytes_per_voxel=memory.RINLM_BYTES_PER_VOXEL,
                                         halo=halo)
    for start, stop, read_start, read_stop in memory.slabs(x.shape[0], slab_planes, halo):
        core = slice(start - read_start, stop - read_start)
        starts = np.zeros((read_stop - read_start, x.shape[1]), np.int64)
        stops = np.zeros_like(starts)  # halo planes: read, not computed
        starts[core], stops[core] = row_start[start:stop], row_stop[start:stop]
        if not np.any(stops > starts):
            continue
        guide_slab = (guide[read_start:read_stop].astype(np.float64) * scale).astype(np.float32)
        scaled_x = (x[read_start:read_stop].astype(np.float64) * scale).astype(np.float32)
        values = np.square(scaled_x) if rician else scaled_x
        if sigma_map is None:
            h_slab = h_map
        else:
            h_slab = np.maximum(sigma_map[read_start:read_stop].astype(np.float64) * scale / 3.0,
                                tiny)
        average = _weighted_average(
            guide_slab, _local_mean_3x3x3(guide_slab, (1, 2) if in_plane else (0, 1, 2)), values,
            starts, stops, int(search_radius), radius_z, h, h_slab,
        )[core]
        if rician:
            sigma_part = (scaled_sigma if sigma_map is None
                          else sigma_map[start:stop].astype(np.float64) * scale)
            average = np.sqrt(np.maximum(average - 2.0 * sigma_part**2, 0.0))
        average /= scale
        if mask is None:
            output[start:stop] = average
        else:
            inside = mask[start:stop]
            output[start:stop][inside] = average[inside]
    return output
