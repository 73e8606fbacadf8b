"""Compiled scans of bfloat16 score blocks into per-row candidate lists (numba).

A block S (B, C) of approximate scores is read once per direction. Each scan keeps, for
every row it serves, the entries whose score is at least the row's threshold
``tau - band``: ``tau`` is a lower bound of the row's k-th best approximate score, raised
whenever the row's list fills up (the k-th best of the list), so it tracks the true k-th
best with no lag, as faiss's heaps do. Entries are compared TILE at a time (a vectorized
maximum of margins over the thresholds); only a tile with a hit is read entry by entry.

Scores are compared as order-preserving int16 keys of their bfloat16 bits; ``LUT`` maps a
key back to its float value. A row whose list is full even after raising ``tau`` stops and
records where; the caller widens the lists and scans again from there.
"""
from __future__ import annotations

import numba as nb
import numpy as np

KEY_OFFSET = 32768
# rounding a float32 score to bfloat16 moves it by <= 2**-8 of itself: twice, for tau's own
# rounding and the candidate's, plus margin
REL_ROUND = 2.0**-7 + 2.0**-12
TILE = 64  # entries compared at once before any is read one by one
SUB = 16  # the sub-tiles of a row tile with a hit, checked the same way


def bf16_key(value: float) -> int:
    """Key of ``value`` truncated to bfloat16 (exact for bfloat16 values)."""
    raw = int(np.array([value], np.float32).view(np.int32)[0]) >> 16
    return raw if raw >= 0 else -32769 - raw


NEG_INF_KEY = bf16_key(-np.inf)


def key_lut() -> np.ndarray:
    """(65536,) float32 value of each key - KEY_OFFSET, non-decreasing (NaN keys -> +-inf)."""
    keys = np.arange(-KEY_OFFSET, KEY_OFFSET, dtype=np.int32)
    raw = np.where(keys >= 0, keys, -32769 - keys).astype(np.int16)
    values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).copy()
    nan = np.isnan(values)
    values[nan & (keys >= 0)] = np.inf
    values[nan & (keys < 0)] = -np.inf
    return values


@nb.njit(inline="always")
def _key(v: np.int16) -> np.int16:
    """Order-preserving key of a bfloat16 given as its int16 bits (negatives: flip magnitude)."""
    return v ^ ((v >> np.int16(15)) & np.int16(0x7FFF))


@nb.njit(cache=True)
def _compact(r, kk, ckey, cid, fill, tau, thr, band, lut):
    """Raise row r's tau to the k-th best key of its list; drop entries below tau - band."""
    f = fill[r]
    if f >= kk:
        kth = np.int32(np.partition(ckey[r, :f].copy(), f - kk)[f - kk])
        if kth > tau[r]:
            tau[r] = kth
    tf = lut[tau[r] + KEY_OFFSET]
    t = np.int32(np.searchsorted(lut, tf - REL_ROUND * abs(tf) - band[r])) - KEY_OFFSET
    t = max(t, NEG_INF_KEY + 1)
    j = 0
    for m in range(f):
        if ckey[r, m] >= t:
            ckey[r, j] = ckey[r, m]
            cid[r, j] = cid[r, m]
            j += 1
    fill[r] = j
    thr[r] = t


@nb.njit(inline="always")
def _push(r, key, ident, kk, ckey, cid, fill, tau, thr, band, lut):
    """Append (key, ident) to row r's list; False when the list is full of candidates."""
    if fill[r] == ckey.shape[1]:
        _compact(r, kk, ckey, cid, fill, tau, thr, band, lut)
        if key < thr[r]:
            return True
        if fill[r] == ckey.shape[1]:
            return False
    ckey[r, fill[r]] = key
    cid[r, fill[r]] = ident
    fill[r] += 1
    return True


@nb.njit(inline="always")
def _raw_threshold(t):
    """Raw-bits threshold equivalent to key t for positive floats; -32768 (read every entry)
    when t <= 0, where raw bits do not order as keys."""
    return np.int32(t) if t > 0 else np.int32(-32768)


@nb.njit(parallel=True, cache=True, fastmath=True)
def scan_rows(s, row0, col0, rows, cols, pos, kk, ckey, cid, fill, tau, thr, band, lut):
    """Row-wise scan: store row row0 + i takes s[i, c] (id col0 + c) if >= its threshold.

    Args:
        s: (B, C) int16 bits of bfloat16 scores; only the first ``rows`` x ``cols`` are real.
        pos: (N,) per store row, the column to start from; set to ``cols`` when done, or to
            the column where its list overflowed.
    Returns:
        True when some row overflowed.
    """
    over = np.zeros(rows, np.bool_)
    for i in nb.prange(rows):
        r = row0 + i
        c0 = pos[r]
        while c0 < cols and not over[i]:
            c1 = min(c0 + TILE, cols)
            tile = s[i, c0:c1]
            t = _raw_threshold(thr[r])
            m = np.int32(-65536)
            for q in range(c1 - c0):  # vectorized: the tile's best margin over the threshold
                d = np.int32(tile[q]) - t
                m = d if d > m else m
            q_end = c1 - c0
            q = 0 if m >= 0 else q_end
            while q < q_end:
                if q % SUB == 0 and q + SUB <= q_end:
                    m = np.int32(-65536)
                    for u in range(q, q + SUB):  # vectorized: does this sub-tile hold a hit?
                        d = np.int32(tile[u]) - t
                        m = d if d > m else m
                    if m < 0:
                        q += SUB
                        continue
                if np.int32(tile[q]) < t:
                    q += 1
                    continue
                v = _key(tile[q])
                if v >= thr[r]:
                    if not _push(r, v, col0 + c0 + q, kk, ckey, cid, fill, tau, thr, band, lut):
                        over[i] = True
                        pos[r] = c0 + q
                        break
                    t = _raw_threshold(thr[r])
                q += 1
            c0 = c1
        if not over[i]:
            pos[r] = cols
    return over.any()


@nb.njit(parallel=True, cache=True, fastmath=True)
def scan_cols(s, row0, col0, rows, cols, pos, kk, ckey, cid, fill, tau, thr, band, lut):
    """Column-wise scan: store row col0 + c takes s[i, c] (id row0 + i) if >= its threshold.

    Threads take tiles of TILE columns and walk down the rows, comparing a row's TILE entries
    with the TILE thresholds at once. ``pos`` holds, per store row, the row of ``s`` to start
    from (``rows`` when done). Returns True when some list overflowed.
    """
    ntiles = (cols + TILE - 1) // TILE
    over = np.zeros(cols, np.bool_)
    for tile in nb.prange(ntiles):
        c_lo, width = tile * TILE, min(TILE, cols - tile * TILE)
        t = np.full(TILE, np.int32(65536))
        start = rows
        for q in range(width):
            t[q] = _raw_threshold(thr[col0 + c_lo + q])
            start = min(start, pos[col0 + c_lo + q])
        for i in range(start, rows):
            row = s[i, c_lo : c_lo + width]
            m = np.int32(-65536)
            if width == TILE:
                for q in range(TILE):  # vectorized: the best margin over the TILE thresholds
                    d = np.int32(row[q]) - t[q]
                    m = d if d > m else m
            else:
                m = 0
            if m < 0:
                continue
            for q in range(width):
                if np.int32(row[q]) < t[q]:
                    continue
                r = col0 + c_lo + q
                v = _key(row[q])
                if v >= thr[r] and i >= pos[r] and not over[c_lo + q]:
                    if _push(r, v, row0 + i, kk, ckey, cid, fill, tau, thr, band, lut):
                        t[q] = _raw_threshold(thr[r])
                    else:
                        over[c_lo + q] = True
                        pos[r] = i
                        t[q] = 65536
        for q in range(width):
            if not over[c_lo + q]:
                pos[col0 + c_lo + q] = rows
    return over.any()


@nb.njit(parallel=True, cache=True)
def compact_rows(row0, rows, kk, ckey, cid, fill, tau, thr, band, lut):
    """Pass over store rows row0 .. row0 + rows: raise tau, drop what falls below."""
    for i in nb.prange(rows):
        _compact(row0 + i, kk, ckey, cid, fill, tau, thr, band, lut)


@nb.njit(parallel=True, cache=True)
def seed_tau(row0, reps, kk, tau):
    """Raise the tau of store rows row0 .. row0 + len(reps) to the kk-th best of their
    (rows, G) int16 group representatives: each a value of its group, so kk groups hold a
    score >= the kk-th best representative, a lower bound of the kk-th best score."""
    for i in nb.prange(reps.shape[0]):
        keys = np.empty(reps.shape[1], np.int16)
        for g in range(reps.shape[1]):
            keys[g] = _key(reps[i, g])
        kth = np.partition(keys, reps.shape[1] - kk)[reps.shape[1] - kk]
        tau[row0 + i] = max(tau[row0 + i], np.int32(kth))


@nb.njit(parallel=True, cache=True, fastmath=True)
def rescore_rows(x, row0, rows, kk, cid, fill, ids):
    """Float32 scores of rows row0 .. row0 + rows of (N, D) ``x`` against their candidates,
    then each row's top-kk, equal scores in increasing ``ids`` (N,) int64 order ->
    (scores (rows, kk) float32, ``ids`` of the neighbours (rows, kk) int64)."""
    out_s = np.full((rows, kk), -np.inf, np.float32)
    out_i = np.full((rows, kk), -1, np.int64)
    for i in nb.prange(rows):
        r = row0 + i
        f = fill[r]
        sc = np.empty(f, np.float32)
        cand = np.empty(f, np.int64)
        xr = x[r]
        for m in range(f):
            xj = x[cid[r, m]]
            acc = np.float32(0.0)
            for d in range(xr.shape[0]):  # vectorized (fastmath lets the sum reassociate)
                acc += xr[d] * xj[d]
            sc[m] = acc
            cand[m] = ids[cid[r, m]]
        # ties by id, whatever order the scans met the candidates in: sort by id, then stably by score
        by_id = np.argsort(cand, kind="mergesort")
        order = by_id[np.argsort(-sc[by_id], kind="mergesort")[:kk]]
        for m in range(len(order)):
            out_s[i, m] = sc[order[m]]
            out_i[i, m] = cand[order[m]]
    return out_s, out_i
