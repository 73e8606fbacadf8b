"""Compiled scans of bfloat16 score blocks into per-row candidate lists (numba).

A block S (B, C) of approximate scores is read once per direction. Each scan keeps, for
every row it serves, the entries whose score is at least the row's threshold
``tau - band``: ``tau`` is a lower bound of the row's k-th best approximate score, raised
whenever the row's list fills up (the k-th best of the list), so it tracks the true k-th
best with no lag, as faiss's heaps do. Work per entry is one integer compare, on 32
entries at a time until one passes.

Scores are compared as order-preserving int16 keys of their bfloat16 bits; ``LUT`` maps a
key back to its float value. A row whose list is full even after raising ``tau`` stops and
records where; the caller widens the lists and scans again from there.
"""
from __future__ import annotations

import numba as nb
import numpy as np

KEY_OFFSET = 32768
NEVER = 32767  # a threshold no score reaches (the key of a NaN)
# rounding a float32 score to bfloat16 moves it by <= 2**-8 of itself: twice, for tau's own
# rounding and the candidate's, plus margin
REL_ROUND = 2.0**-7 + 2.0**-12
GROUP = 16  # entries per group maximum


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


@nb.njit(cache=True)
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


@nb.njit(parallel=True, cache=True)
def scan_rows(s, ptr, grp, row0, col0, rows, cols, pos, kk, ckey, cid, fill, tau, thr, band, lut):
    """Row-wise scan: store row row0 + i takes s[i, c] (id col0 + c) if >= its threshold.

    Args:
        s: (B, C) int16 bits of bfloat16 scores; only the first ``rows`` x ``cols`` are real.
        ptr, grp: for row i, the groups of GROUP columns worth reading are
            grp[ptr[i]:ptr[i + 1]] (ascending; a superset is fine).
        pos: (N,) per store row, the column to start from; set to ``cols`` when done, or to
            the column where its list overflowed.
    Returns:
        True when some row overflowed.
    """
    over = np.zeros(rows, np.bool_)
    for i in nb.prange(rows):
        r = row0 + i
        for p in range(ptr[i], ptr[i + 1]):
            c_hi = min((grp[p] + 1) * GROUP, cols)
            for c in range(max(grp[p] * GROUP, pos[r]), c_hi):
                v = _key(s[i, c])
                if v >= thr[r] and not _push(r, v, col0 + c, kk, ckey, cid, fill, tau, thr, band, lut):
                    over[i] = True
                    pos[r] = c
                    break
            if over[i]:
                break
        if not over[i]:
            pos[r] = cols
    return over.any()


@nb.njit(parallel=True, cache=True)
def scan_cols(s, ptr, grp, row0, col0, rows, cols, pos, kk, ckey, cid, fill, tau, thr, band, lut):
    """Column-wise scan: store row col0 + c takes s[i, c] (id row0 + i) if >= its threshold.

    ``ptr``, ``grp``: for column c, the groups of GROUP rows worth reading. ``pos`` holds,
    per store row, the row of ``s`` to start from (``rows`` when done).
    Returns True when some list overflowed.
    """
    over = np.zeros(cols, np.bool_)
    for c in nb.prange(cols):
        r = col0 + c
        for p in range(ptr[c], ptr[c + 1]):
            i_hi = min((grp[p] + 1) * GROUP, rows)
            for i in range(max(grp[p] * GROUP, pos[r]), i_hi):
                v = _key(s[i, c])
                if v >= thr[r] and not _push(r, v, row0 + i, kk, ckey, cid, fill, tau, thr, band, lut):
                    over[c] = True
                    pos[r] = i
                    break
            if over[c]:
                break
        if not over[c]:
            pos[r] = rows
    return over.any()


@nb.njit(parallel=True, cache=True)
def compact_rows(row0, rows, kk, ckey, cid, fill, tau, thr, band, lut):
    """Pass over store rows row0 .. row0 + rows: raise tau, drop what falls below."""
    for i in nb.prange(rows):
        _compact(row0 + i, kk, ckey, cid, fill, tau, thr, band, lut)


@nb.njit(parallel=True, cache=True)
def seed_tau(row0, kth, tau):
    """Raise the tau (keys) of store rows row0 .. row0 + len(kth) to the (B,) int16 bits
    ``kth`` of known lower bounds of their k-th best scores."""
    for i in nb.prange(len(kth)):
        tau[row0 + i] = max(tau[row0 + i], _key(kth[i]))


@nb.njit(parallel=True, cache=True, fastmath=True)
def rescore_rows(x, row0, rows, kk, cid, fill):
    """Float32 scores of rows row0 .. row0 + rows of (N, D) ``x`` against their candidates,
    then each row's top-kk -> (scores (rows, kk) float32, ids (rows, kk) int64)."""
    out_s = np.full((rows, kk), -np.inf, np.float32)
    out_i = np.full((rows, kk), -1, np.int64)
    for i in nb.prange(rows):
        r = row0 + i
        f = fill[r]
        sc = np.empty(f, np.float32)
        for m in range(f):
            j = cid[r, m]
            acc = np.float32(0.0)
            for d in range(x.shape[1]):
                acc += x[r, d] * x[j, d]
            sc[m] = acc
        order = np.argsort(-sc, kind="mergesort")[:kk]
        for m in range(len(order)):
            out_s[i, m] = sc[order[m]]
            out_i[i, m] = cid[r, order[m]]
    return out_s, out_i
