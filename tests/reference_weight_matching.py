"""Independent reference implementation of Git Re-Basin weight matching.

Ainsworth, Hayase, Srinivasa, "Git Re-Basin: Merging Models modulo Permutation
Symmetries" (ICLR 2023), Algorithm 1 (permutation coordinate descent).
Written from the paper only; uses numpy and scipy, never the library under test.
"""
import numpy as np
from scipy.optimize import linear_sum_assignment


def _permute(w, axes, perms, skip_axis=None):
    """Apply `np.take(w, perms[g], axis)` on every tagged axis except `skip_axis`."""
    for axis, g in enumerate(axes):
        if g is not None and axis != skip_axis:
            w = np.take(w, perms[g], axis=axis)
    return w


def apply_perms(params, axes_to_perm, perms):
    """Return a new dict with every tagged axis of every param permuted."""
    return {k: _permute(np.asarray(v), axes_to_perm[k], perms) for k, v in params.items()}


def _objective(params_a, params_b, axes_to_perm, perms):
    pb = apply_perms(params_b, axes_to_perm, perms)
    return float(sum((np.asarray(params_a[k]) * pb[k]).sum() for k in params_a))


def weight_matching_reference(params_a, params_b, axes_to_perm, sizes, orders, max_sweeps=100):
    """Permutation coordinate descent maximizing sum_params <A, permuted B>.

    `orders(sweep_index)` gives the list of group names visited in that sweep.
    Returns (perms: group -> int64 array with P[i] = unit of B placed at i,
    objective after each sweep as a list of floats).
    """
    perms = {g: np.arange(n, dtype=np.int64) for g, n in sizes.items()}
    history = []
    for sweep in range(max_sweeps):
        changed = False
        for g in orders(sweep):
            n = sizes[g]
            S = np.zeros((n, n))
            for name, axes in axes_to_perm.items():
                for axis, tag in enumerate(axes):
                    if tag != g:
                        continue
                    a = np.moveaxis(np.asarray(params_a[name], dtype=np.float64), axis, 0).reshape(n, -1)
                    bp = _permute(np.asarray(params_b[name], dtype=np.float64), axes, perms, skip_axis=axis)
                    b = np.moveaxis(bp, axis, 0).reshape(n, -1)
                    S += a @ b.T
            _, col = linear_sum_assignment(S, maximize=True)
            rows = np.arange(n)
            old_val, new_val = S[rows, perms[g]].sum(), S[rows, col].sum()
            if new_val - old_val > 1e-12 * max(1.0, abs(old_val)):
                perms[g] = col.astype(np.int64)
                changed = True
        history.append(_objective(params_a, params_b, axes_to_perm, perms))
        if not changed:
            break
    return perms, history


def _self_test():
    """Plant random permutations in a 3-layer MLP and check exact recovery."""
    rng = np.random.default_rng(0)
    d, h1, h2, o = 7, 16, 12, 5
    A = {"W1": rng.normal(size=(h1, d)), "b1": rng.normal(size=h1),
         "W2": rng.normal(size=(h2, h1)), "b2": rng.normal(size=h2),
         "W3": rng.normal(size=(o, h2)), "b3": rng.normal(size=o)}
    axes = {"W1": ("h1", None), "b1": ("h1",), "W2": ("h2", "h1"),
            "b2": ("h2",), "W3": (None, "h2"), "b3": (None,)}
    sizes = {"h1": h1, "h2": h2}
    planted = {"h1": rng.permutation(h1), "h2": rng.permutation(h2)}
    B = apply_perms(A, axes, planted)
    perms, hist = weight_matching_reference(A, B, axes, sizes, lambda s: ["h1", "h2"])
    rec = apply_perms(B, axes, perms)
    assert all(np.array_equal(rec[k], A[k]) for k in A)
    for g in sizes:  # recovered perm is the inverse of the planted one
        assert np.array_equal(perms[g], np.argsort(planted[g]))
    assert np.isclose(hist[-1], sum((v * v).sum() for v in A.values()))
    assert all(x <= y + 1e-9 for x, y in zip(hist, hist[1:]))
    print(f"self-test OK: sweeps={len(hist)}, objective history={hist}")


if __name__ == "__main__":
    _self_test()
