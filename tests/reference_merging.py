"""Independent reference implementations of two model-merging algorithms.

A test oracle: numpy/scipy only, float64, nothing from the library under test.
Alignment helpers come from tests/reference_alignment.py. A model is a list
[(W1, b1), ..., (WL, bL)], W_l of shape (m_l, m_{l-1}), ReLU on hidden layers.
X is (N, d). Per-model weights lam_k (default uniform) are normalized to sum 1.
The formulas below follow the brief for this oracle. The papers themselves
(only an unrelated abstract is in /work/shared/papers) were not checked.

1. RegMean: Jin, Ren, Preotiuc-Pietro, Cheng, "Dataless Knowledge Fusion by
   Merging Weights of Language Models", ICLR 2023. Models k >= 1 are first
   aligned to model 0 by activation matching (Tatro et al.), unless perms is
   given: perms[k] is then a list of int64 arrays, one per hidden layer, in
   permute_mlp's convention (aligned unit i = original unit perms[k][l][i]),
   and model k is aligned by permute_mlp(model_k, perms[k]) with no matching
   run. perms[0] may be None (identity); a non-None perms[0] is applied to
   model 0 too. Then, for every
   layer l (output included), Z_k = [H_k, 1] is layer l's input in aligned
   model k (X for l = 0, post-ReLU after), with a ones column for the bias.
       G_k = Z_k^T Z_k / N,   Gt_k = alpha G_k + (1 - alpha) diag(diag(G_k)),
       Theta_k = [W_k | b_k]^T, shape (d+1, m),   A = sum_k lam_k Gt_k,
       delta = 1e-6 mean(diag A),
       Theta = (A + delta I)^{-1} (sum_k lam_k Gt_k Theta_k + delta sum_k lam_k Theta_k),
       W = Theta[:-1].T,  b = Theta[-1].
2. ZipIt!: Stoica, Bolya, Bjorner, Ramesh, Hearn, Hoffman, "ZipIt! Merging
   Models from Different Tasks without Training", ICLR 2024. This is the full
   zip with merges inside one model allowed. For K models it becomes
   average-linkage clustering. No alignment. For hidden layer l, the units of
   all ORIGINAL models are put side by side (model 0 first): N_tot units, with
   post-ReLU features on X. C = corr(post) + tie_break * corr(pre), where
   corr is the Pearson correlation (ddof=0) of the columns side by side and
   pre are the same units' pre-activations W h + b on X (tie_break defaults
   to 0, and then corr(pre) is not computed at all). In each corr on its own
   columns, a unit with std <= 1e-6 * max std of those columns has
   correlation 0 with every unit, itself included.
   The target width is n = n_0 and the cap is c = ceil(N_tot / n). Start from
   singletons. Each step merges the pair of distinct clusters with the highest
   S(A, B) = mean_{i in A, j in B} C[i, j] among pairs with |A| + |B| <= c.
   It stops at n clusters. If no pair fits the cap, the cap is dropped.
   Clusters are ordered by their smallest member index. For member j of
   model k in cluster f: M_k[f, j] = lam_k / sum_{members} lam_model(member)
   and U_k[j, f] = 1. Fused layers: W^l = sum_k M_k^l W_k^l U_k^{l-1} and
   b^l = sum_k M_k^l b_k^l, with U^0 = I. The output layer is
   W^L = sum_k lam_k W_k^L U_k^{L-1}, b^L = sum_k lam_k b_k^L.
"""
import math
import time

import numpy as np

from reference_alignment import (activation_matching, forward, hidden_activations,
                                 layer_inputs, permute_mlp)

_DEAD_REL = 1e-6


def _f64(layers):
    return [(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)) for W, b in layers]


def _lams(weights, K):
    lam = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, dtype=np.float64)
    assert lam.shape == (K,)
    return lam / lam.sum()


def _check_perms(p, m):
    """p as a list of int64 permutations, one per hidden layer of model m."""
    p = [np.asarray(q, dtype=np.int64) for q in p]
    assert len(p) == len(m) - 1
    for q, (W, _) in zip(p, m[:-1]):
        assert q.shape == (W.shape[0],) and np.array_equal(np.sort(q), np.arange(W.shape[0]))
    return p


def regmean(models, X, weights=None, alpha=0.95, perms=None):
    """RegMean after aligning models k >= 1 to model 0; returns (layers, perms_per_model).

    perms=None: alignment by activation matching. Otherwise perms[k] (a list of
    int64 arrays per hidden layer, permute_mlp convention; perms[0] may be None
    for identity) is used as given. The perms returned are the ones used."""
    models = [_f64(m) for m in models]
    X = np.asarray(X, dtype=np.float64)
    K = len(models)
    lam, N = _lams(weights, K), X.shape[0]
    ident = [np.arange(W.shape[0], dtype=np.int64) for W, _ in models[0][:-1]]
    if perms is None:
        perms = [ident] + [[np.asarray(q, dtype=np.int64) for q in activation_matching(models[0], m, X)]
                           for m in models[1:]]
    else:
        assert len(perms) == K
        perms = [ident if p is None and k == 0 else _check_perms(p, models[k])
                 for k, p in enumerate(perms)]
    aligned = [models[0] if k == 0 and perms[0] is ident else permute_mlp(m, perms[k])
               for k, m in enumerate(models)]
    inputs = [layer_inputs(m, X) for m in aligned]
    out = []
    for l in range(len(models[0])):
        A = rhs = tsum = 0.0
        for k, m in enumerate(aligned):
            Z = np.hstack([inputs[k][l], np.ones((N, 1))])
            G = Z.T @ Z / N
            Gt = alpha * G + (1.0 - alpha) * np.diag(np.diag(G))
            Theta = np.vstack([m[l][0].T, m[l][1][None, :]])
            A, rhs, tsum = A + lam[k] * Gt, rhs + lam[k] * Gt @ Theta, tsum + lam[k] * Theta
        delta = 1e-6 * np.mean(np.diag(A))
        Theta = np.linalg.solve(A + delta * np.eye(A.shape[0]), rhs + delta * tsum)
        out.append((Theta[:-1].T.copy(), Theta[-1].copy()))
    return out, perms


def correlation(F):
    """Pearson correlation of the columns of F (ddof=0); near-constant columns correlate 0."""
    F = np.asarray(F, dtype=np.float64)
    sd = F.std(axis=0)
    Z = (F - F.mean(axis=0)) / np.where(sd > _DEAD_REL * sd.max(), sd, np.inf)
    return Z.T @ Z / F.shape[0]


def average_linkage(C, n, cap):
    """Merge clusters (highest mean C, sizes <= cap while possible) to n; sorted lists of members."""
    S = np.array(C, dtype=np.float64)
    T = S.shape[0]
    sizes, alive = np.ones(T, dtype=np.int64), np.ones(T, dtype=bool)
    members = [[i] for i in range(T)]
    D = S.copy()
    np.fill_diagonal(D, -np.inf)
    if 2 > cap:
        D[:] = -np.inf
    for _ in range(T - n):
        a, b = divmod(int(np.argmax(D)), T)
        if D[a, b] == -np.inf:  # no pair fits the cap: drop it
            cap = math.inf
            D = np.where(alive[:, None] & alive[None, :], S, -np.inf)
            np.fill_diagonal(D, -np.inf)
            a, b = divmod(int(np.argmax(D)), T)
        a, b = min(a, b), max(a, b)
        row = (sizes[a] * S[a] + sizes[b] * S[b]) / (sizes[a] + sizes[b])  # Lance-Williams
        S[a], S[:, a] = row, row
        sizes[a] += sizes[b]
        members[a] += members[b]
        alive[b] = False
        ok = alive & (sizes + sizes[a] <= cap)
        ok[a] = False
        drow = np.where(ok, row, -np.inf)
        D[a], D[:, a], D[b], D[:, b] = drow, drow, -np.inf, -np.inf
    return sorted((sorted(members[i]) for i in np.flatnonzero(alive)), key=lambda c: c[0])


def zipit(models, X, weights=None, tie_break=0.0):
    """ZipIt! full zip by capped average linkage; returns (layers, merges[l][k] = M_k^l).

    Similarity C = corr(post-ReLU) + tie_break * corr(pre-activation), each
    with its own dead-unit rule; tie_break = 0 skips corr(pre) entirely."""
    models = [_f64(m) for m in models]
    K, lam = len(models), _lams(weights, len(models))
    tie_break = float(tie_break)
    acts = [hidden_activations(m, X) for m in models]
    pres = [hidden_activations(m, X, pre_activation=True) for m in models] if tie_break else None
    U_prev = [np.eye(models[0][0][0].shape[1]) for _ in range(K)]
    out, merges = [], []
    for l in range(len(models[0]) - 1):
        widths = [a[l].shape[1] for a in acts]
        offs = np.concatenate([[0], np.cumsum(widths)])
        owner = np.repeat(np.arange(K), widths)
        n, N_tot = widths[0], int(offs[-1])
        C = correlation(np.hstack([a[l] for a in acts]))
        if tie_break:
            C = C + tie_break * correlation(np.hstack([z[l] for z in pres]))
        clusters = average_linkage(C, n, math.ceil(N_tot / n))
        Ms = [np.zeros((n, w)) for w in widths]
        Us = [np.zeros((w, n)) for w in widths]
        for f, cl in enumerate(clusters):
            tot = lam[owner[cl]].sum()
            for g in cl:
                k, j = owner[g], g - offs[owner[g]]
                Ms[k][f, j], Us[k][j, f] = lam[k] / tot, 1.0
        W = sum(Ms[k] @ models[k][l][0] @ U_prev[k] for k in range(K))
        b = sum(Ms[k] @ models[k][l][1] for k in range(K))
        out.append((W, b))
        merges.append(Ms)
        U_prev = Us
    out.append((sum(lam[k] * models[k][-1][0] @ U_prev[k] for k in range(K)),
                sum(lam[k] * models[k][-1][1] for k in range(K))))
    return out, merges


# ------------------------------------------------------------------ self-test --
def _random_mlp(rng, dims):
    return [(rng.normal(size=(o, i)) / np.sqrt(i), 0.3 * rng.normal(size=o))
            for i, o in zip(dims[:-1], dims[1:])]


def _naive_linkage(C, n, cap):
    """O(T^4) direct average linkage, for cross-checking average_linkage."""
    cl = [[i] for i in range(C.shape[0])]
    while len(cl) > n:
        pairs = [(np.mean(C[np.ix_(A, B)]), i, j) for i, A in enumerate(cl)
                 for j, B in enumerate(cl) if i < j and len(A) + len(B) <= cap]
        if not pairs:
            cap = math.inf
            continue
        _, i, j = max(pairs, key=lambda t: t[0])
        cl[i] = cl[i] + cl.pop(j)
    return sorted((sorted(c) for c in cl), key=lambda c: c[0])


def _close(A, B, tol=1e-8):
    return all(np.max(np.abs(x - y)) < tol for (x, _), (y, _) in zip(A, B)) and \
        all(np.max(np.abs(x - y)) < tol for (_, x), (_, y) in zip(A, B))


def _self_test():
    rng = np.random.default_rng(3)
    dims, N = (20, 16, 12, 5), 200
    X = rng.normal(size=(N, dims[0]))
    a = _random_mlp(rng, dims)
    assert all(H.std(axis=0).min() > 1e-3 for H in hidden_activations(a, X))
    ya = forward(a, X)
    planted = [rng.permutation(m) for m in dims[1:-1]]
    pa = permute_mlp(a, planted)

    # RegMean: copies, permuted copies, K = 1 with alpha = 1 all return the model.
    for ms, w in (([a, a, a], None), ([a, pa], [0.3, 0.7]), ([a], None)):
        for alpha in (0.95, 1.0, 0.5):
            got, perms = regmean(ms, X, weights=w, alpha=alpha)
            assert _close(got, a), (len(ms), alpha)
    _, perms = regmean([a, pa], X)
    assert all(np.array_equal(p, np.arange(len(p))) for p in perms[0])
    assert all(np.array_equal(p, np.argsort(q)) for p, q in zip(perms[1], planted))
    # RegMean of distinct models: alpha = 1 solves the weighted least squares (first layer).
    c = _random_mlp(rng, dims)
    got, perms = regmean([a, c], X, weights=[1, 3], alpha=1.0)
    ca = permute_mlp(c, perms[1])
    for l in range(len(dims) - 1):  # gradient of sum_k lam_k ||Z_k (Theta - Theta_k)||^2 vanishes
        Th = np.vstack([got[l][0].T, got[l][1]])
        g = sum(w * Z.T @ Z @ (Th - np.vstack([m[l][0].T, m[l][1]]))
                for w, m in ((0.25, a), (0.75, ca)) for Z in [np.hstack([layer_inputs(m, X)[l], np.ones((N, 1))])])
        assert np.max(np.abs(g)) < 1e-5 * N, l  # Theta_avg gives ~0.2 N here
    # RegMean with perms given: the matched perms reproduce perms=None exactly (entry 0
    # None or identity); the planted inverse on [a, pa] gives a back; others are used as given.
    e = _random_mlp(rng, dims)
    for ms, w, alpha in (([a, c], [1, 3], 1.0), ([a, c, e], [1, 2, 3], 0.95), ([c, pa, e], None, 0.5)):
        ref, ref_perms = regmean(ms, X, weights=w, alpha=alpha)
        for p0 in (None, ref_perms[0]):
            given = [p0] + [[q.copy() for q in p] for p in ref_perms[1:]]
            got, got_perms = regmean(ms, X, weights=w, alpha=alpha, perms=given)
            assert all(np.array_equal(x, y) for L1, L2 in zip(got, ref) for x, y in zip(L1, L2))
            assert all(np.array_equal(x, y) and x.dtype == np.int64
                       for P1, P2 in zip(got_perms, ref_perms) for x, y in zip(P1, P2))
    got, _ = regmean([a, pa], X, perms=[None, [np.argsort(q) for q in planted]])
    assert _close(got, a)
    rand_perms = [None, [rng.permutation(m) for m in dims[1:-1]]]
    got, got_perms = regmean([a, c], X, perms=rand_perms)
    ref, _ = regmean([a, permute_mlp(c, rand_perms[1])], X,
                     perms=[None, [np.arange(m) for m in dims[1:-1]]])
    assert _close(got, ref, 1e-12) and all(np.array_equal(x, y) for x, y in zip(got_perms[1], rand_perms[1]))

    # ZipIt: twins and permuted twins reproduce the model; K = 3 with uneven weights too.
    for ms, w in (([a, a], None), ([a, pa], None), ([pa, a], [0.2, 0.8]), ([a, pa, a], [1, 2, 3])):
        got, merges = zipit(ms, X, weights=w)
        assert np.max(np.abs(forward(got, X) - ya)) < 1e-8
        for Ms in merges:
            assert np.allclose(sum(M.sum(axis=1) for M in Ms), 1.0)
    _, merges = zipit([a, pa], X)
    for Ms, q in zip(merges, planted):  # unit i of a pairs with its twin argsort(q)[i] in pa
        assert np.allclose(Ms[0], 0.5 * np.eye(len(q))) and np.allclose(Ms[1], 0.5 * np.eye(len(q))[:, q])

    # ZipIt tie_break: 0 is the old path (clusters from corr(post) alone), bit for bit.
    def clusters_of(Ms):
        n = Ms[0].shape[0]
        return [sorted(int(np.sum([M.shape[1] for M in Ms[:k]]) + j) for k, M in enumerate(Ms)
                       for j in np.flatnonzero(M[f])) for f in range(n)]
    for ms, w in (([a, c], None), ([a, c, e], [1, 2, 3]), ([c, pa], [0.7, 0.3])):
        ref, ref_merges = zipit(ms, X, weights=w)
        got, merges = zipit(ms, X, weights=w, tie_break=0.0)
        assert all(np.array_equal(x, y) for L1, L2 in zip(got, ref) for x, y in zip(L1, L2))
        acts = [hidden_activations(m, X) for m in ms]
        for l, Ms in enumerate(merges):
            T, n = sum(A[l].shape[1] for A in acts), dims[l + 1]
            old = average_linkage(correlation(np.hstack([A[l] for A in acts])), n, math.ceil(T / n))
            assert clusters_of(Ms) == old and clusters_of(ref_merges[l]) == old
        got, _ = zipit(ms, X, weights=w, tie_break=0.5)  # the pre term does change clusters here
        assert not _close(got, ref)
    # tie_break = 1e-6 keeps twins; with dead units it pairs the dead twins (0 does not).
    dead = [(W.copy(), b.copy()) for W, b in a]
    dead[0][1][[3, 7, 11]] = -50.0  # units 3, 7, 11 of hidden layer 1 never fire on X
    assert np.all(hidden_activations(dead, X)[0][:, [3, 7, 11]] == 0)
    pdead, ydead = permute_mlp(dead, planted), forward(dead, X)
    for ms, w, y in (([a, a], None, ya), ([a, pa], None, ya), ([pa, a], [0.2, 0.8], ya),
                     ([a, pa, a], [1, 2, 3], ya), ([dead, pdead], None, ydead)):
        got, merges = zipit(ms, X, weights=w, tie_break=1e-6)
        assert np.max(np.abs(forward(got, X) - y)) < 1e-8
        for Ms in merges:
            assert np.allclose(sum(M.sum(axis=1) for M in Ms), 1.0)
    for tb, paired in ((1e-6, True), (0.0, False)):
        got, merges = zipit([dead, pdead], X, tie_break=tb)
        assert np.max(np.abs(forward(got, X) - ydead)) < 1e-8
        Ms, q = merges[0], planted[0]
        assert (np.allclose(Ms[0], 0.5 * np.eye(len(q))) and
                np.allclose(Ms[1], 0.5 * np.eye(len(q))[:, q])) == paired

    # Clustering: fast == naive, the cap holds, a dead unit has correlation 0.
    for T, n in ((12, 5), (15, 4), (9, 9), (10, 1), (21, 7)):
        F = rng.normal(size=(40, 3)) @ rng.normal(size=(3, T)) + 0.5 * rng.normal(size=(40, T))
        F[:, 2] = 1.0
        C = correlation(F)
        assert np.all(C[2] == 0) and np.all(C[:, 2] == 0)
        cap = math.ceil(T / n)
        got = average_linkage(C, n, cap)
        assert got == _naive_linkage(C, n, cap) and len(got) == n
        assert max(map(len, got)) <= cap and sorted(sum(got, [])) == list(range(T))
    got = average_linkage(np.zeros((6, 6)), 2, 2)  # cap cannot be met: dropped, still 2 clusters
    assert len(got) == 2 and sorted(sum(got, [])) == list(range(6))
    F = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 1600)) + rng.normal(size=(300, 1600))
    t = time.time()
    got = average_linkage(correlation(F), 800, 2)
    assert max(map(len, got)) <= 2 and len(got) == 800
    print(f"self-test OK (1600-unit clustering in {time.time() - t:.2f}s)")


if __name__ == "__main__":
    _self_test()
