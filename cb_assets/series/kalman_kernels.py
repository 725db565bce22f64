"""Compiled recursions of the local-level Kalman model (one scalar state per column).

All jitted code lives in this one file on purpose: numba's on-disk cache is invalidated by the
modification time of the file that defines a function, not of the functions it calls, so a kernel in
another file calling these could keep running stale machine code after an edit here.

Model per column: x_t = x_{t-1} + w_t, w ~ N(0, q);  y_t = x_t + v_t, v ~ N(0, r); NaN/inf in y = missing.
(x0, p0) is the prior of x_0 *before* y_0 is applied (pykalman's initial_state_mean/covariance).

The variance updates use algebraically equal forms of the textbook ones that are sums/products of
non-negative terms (p*r/s instead of p - p*p/s, and likewise in the smoother), so they never go negative
through cancellation when one variance dwarfs the other.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_LOG_2PI = math.log(2.0 * math.pi)


@njit(cache=True, nogil=True)
def filter_column(
    y: np.ndarray, q: float, r: float, x0: float, p0: float, fm: np.ndarray, fv: np.ndarray
) -> float:
    """Forward pass over one contiguous column; fills filtered mean/var, returns the log-likelihood.

    The log-likelihood sums log N(y_t; predicted mean, predicted var + r) over observed rows only,
    which is what pykalman's `loglikelihood` computes.
    """
    m = x0
    p = p0
    ll = 0.0
    for t in range(y.shape[0]):
        if t > 0:
            # Transition: the mean is unchanged under a random walk, only uncertainty grows.
            p = p + q
        yt = y[t]
        if np.isfinite(yt):
            s = p + r
            e = yt - m
            m = m + (p / s) * e
            ll -= 0.5 * (_LOG_2PI + math.log(s) + e * e / s)
            p = p * (r / s)
        fm[t] = m
        fv[t] = p
    return ll


@njit(cache=True, nogil=True)
def smooth_column(fm: np.ndarray, fv: np.ndarray, q: float, sm: np.ndarray, sv: np.ndarray) -> float:
    """Rauch-Tung-Striebel backward pass; fills smoothed mean/var, returns the EM statistic for q.

    The returned sum over t = 0..T-2 of E[(x_{t+1} - x_t)^2 | all y] is what the M-step for q divides by
    T - 1. It equals pykalman's (m_{t+1}-m_t)^2 + V_t + V_{t+1} - 2 V_{t+1,t} with V_{t+1,t} = V_{t+1} J_t,
    rewritten with c = 1 - J_t = q / (f_t + q) as c (f_t + c V_{t+1}), which cannot cancel to a negative.
    """
    n = fm.shape[0]
    stat = 0.0
    if n == 0:
        return stat
    sm[n - 1] = fm[n - 1]
    sv[n - 1] = fv[n - 1]
    for t in range(n - 2, -1, -1):
        pv = fv[t] + q
        if pv > 0.0:
            c = q / pv
            j = fv[t] / pv
        else:
            # q = 0 and a certain state: x_t = x_{t+1} exactly, the gain is 1.
            c = 0.0
            j = 1.0
        sm[t] = fm[t] + j * (sm[t + 1] - fm[t])
        sv[t] = fv[t] * c + j * j * sv[t + 1]
        d = sm[t + 1] - sm[t]
        stat += d * d + c * (fv[t] + c * sv[t + 1])
    return stat


@njit(cache=True, nogil=True)
def run_columns(
    y: np.ndarray,
    q: np.ndarray,
    r: np.ndarray,
    x0: np.ndarray,
    p0: np.ndarray,
    smooth: bool,
    mean: np.ndarray,
    var: np.ndarray,
    loglik: np.ndarray,
) -> None:
    """Filter (and optionally smooth) every column of a (T, K) array into `mean`, `var`, `loglik`.

    Each column is copied into a contiguous buffer first: the recursions then run on unit-stride memory
    and only one specialisation of the column kernels is ever compiled.
    """
    n, k_cols = y.shape
    yk = np.empty(n)
    fm = np.empty(n)
    fv = np.empty(n)
    sm = np.empty(n)
    sv = np.empty(n)
    for k in range(k_cols):
        for t in range(n):
            yk[t] = y[t, k]
        loglik[k] = filter_column(yk, q[k], r[k], x0[k], p0[k], fm, fv)
        if smooth:
            smooth_column(fm, fv, q[k], sm, sv)
            for t in range(n):
                mean[t, k] = sm[t]
                var[t, k] = sv[t]
        else:
            for t in range(n):
                mean[t, k] = fm[t]
                var[t, k] = fv[t]


@njit(cache=True, nogil=True)
def em_columns(
    y: np.ndarray,
    q: np.ndarray,
    r: np.ndarray,
    x0: np.ndarray,
    p0: np.ndarray,
    fit_q: bool,
    fit_r: bool,
    fit_x0: bool,
    fit_p0: bool,
    tol: float,
    max_iter: int,
    floor: np.ndarray,
    trace: np.ndarray,
    n_iter: np.ndarray,
    converged: np.ndarray,
    loglik: np.ndarray,
) -> None:
    """EM per column, in place on q, r, x0, p0; each column stops on its own when it converges.

    Iteration i: filter with the current parameters (log-likelihood ll_i, stored in trace[i]); stop if
    |ll_i - ll_{i-1}| <= tol * max(|ll_{i-1}|, n_obs) (tol > 0) or i == max_iter; otherwise smooth and
    replace all fitted parameters at once from that one E-step, as pykalman does. So n_iter counts the
    M-steps applied, and loglik is the log-likelihood of the parameters returned. The n_obs guard keeps
    the test meaningful when a column's log-likelihood happens to sit near zero (its sign and size
    depend on the units of the data). q and r never go below `floor` (see fit_em).
    """
    n, k_cols = y.shape
    yk = np.empty(n)
    fm = np.empty(n)
    fv = np.empty(n)
    sm = np.empty(n)
    sv = np.empty(n)
    for k in range(k_cols):
        n_obs = 0
        for t in range(n):
            yk[t] = y[t, k]
            if np.isfinite(yk[t]):
                n_obs += 1
        if n_obs == 0:
            # Nothing to learn from: every E-step would return the prior. Keep the parameters as given.
            trace[0, k] = 0.0
            loglik[k] = 0.0
            n_iter[k] = 0
            converged[k] = True
            continue
        qk = q[k]
        rk = r[k]
        xk = x0[k]
        pk = p0[k]
        ll_prev = 0.0
        it = 0
        done = False
        while True:
            ll = filter_column(yk, qk, rk, xk, pk, fm, fv)
            trace[it, k] = ll
            if it > 0 and tol > 0.0 and abs(ll - ll_prev) <= tol * max(abs(ll_prev), float(n_obs)):
                done = True
                break
            if it >= max_iter:
                break
            q_stat = smooth_column(fm, fv, qk, sm, sv)
            if fit_r:
                acc = 0.0
                for t in range(n):
                    if np.isfinite(yk[t]):
                        e = yk[t] - sm[t]
                        acc += e * e + sv[t]
                r_new = max(acc / n_obs, floor[k])
            else:
                r_new = rk
            q_new = max(q_stat / (n - 1), floor[k]) if (fit_q and n > 1) else qk
            x_new = sm[0] if fit_x0 else xk
            if fit_p0:
                # pykalman centres on the new initial mean when it is fitted too, else on the fixed one.
                d = sm[0] - x_new
                p_new = sv[0] + d * d
            else:
                p_new = pk
            qk = q_new
            rk = r_new
            xk = x_new
            pk = p_new
            ll_prev = ll
            it += 1
        q[k] = qk
        r[k] = rk
        x0[k] = xk
        p0[k] = pk
        loglik[k] = ll
        n_iter[k] = it
        converged[k] = done
