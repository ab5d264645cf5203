"""Independent reference implementations of two neuron-alignment algorithms.

Written for use as a test oracle, with numpy and scipy only: no torch, and
nothing from the library under test. All arithmetic is float64.

Sources. /work/shared/papers holds only the abstracts of the two papers, so
the section and equation numbers below could not be checked against a full
text. Where the abstract says too little, the choice follows the authors'
released code (read, not copied) and says so.

1. Tatro, Chen, Das, Melnyk, Sattigeri, Lai, "Optimizing Mode Connectivity via
   Neuron Alignment", NeurIPS 2020 (arXiv:2009.02439). Neuron alignment
   ("promotes similarity between the distribution of intermediate
   activations", abstract) works layer by layer. For hidden layer l it takes
   the activations A (model a) and B (model b) of shape (n, m) on the
   alignment data and standardizes every unit over the n examples:
       z_i = (a_i - mean(a_i)) / std(a_i),  std with ddof = 0.
   The cross-correlation is C[i, j] = (1/n) sum_x z^a_i(x) z^b_j(x), the
   Pearson correlation. It then solves the linear assignment
       perm_l = argmax_{pi in S_m} sum_i C[i, pi(i)].
   Pre- versus post-activation: I could not check the paper's text. The
   authors' code (IBM/NeuronAlignment, utils/crosscorrelation.compute_corr ->
   utils.get_activations(pre_act=False)) correlates the post-ReLU outputs by
   default. A NeurIPS 2020 review, however, says the paper aligns
   pre-activations. Because the sources disagree, the default here is
   post-ReLU, and `pre_activation=True` uses W h + b instead.
   Zero std: a unit that is constant on X (std <= eps, eps = 1e-12) gets
   z = 0, so it has correlation exactly 0 with every unit. Its match is then
   arbitrary and left to the solver. Units with std > eps are divided by
   their exact std, with no "+ eps" bias. The authors' code uses std + 1e-5.
   Order: each layer is matched on its own. Model b's activations are taken
   from the *unpermuted* b. Permuting b's earlier hidden layers (rows of
   W_k, b_k and columns of W_{k+1}, for k < l) does not change the function
   computed by any unit of layer l, so b's layer-l activation matrix is the
   same with or without those permutations. Only perm_l reorders its
   columns. C_l, and so perm_l, is therefore the same either way.

2. Ferbach, Goujaud, Gidel, Dieuleveut, "Proving Linear Mode Connectivity of
   Neural Networks via Optimal Transport", AISTATS 2024 (arXiv:2310.19103).
   §6 (Fig. 2) and App. D (Thm D.2) propose covariance-weighted weight
   matching. It measures layer l's weight difference in the norm
   ||M||_{2,Sigma}^2 = tr(M Sigma M^T) = ||M Sigma^{1/2}||_F^2, where
   Sigma = Sigma_{l-1} describes the layer's input. Equation number: not
   verifiable here. In the authors' notebook (damienferbach/OT_LMC,
   weight_matching_conditional_gradient2 = "WM (ours)"), Sigma_{l-1} is the
   *uncentred second moment* E[h h^T] of *model a's* post-ReLU activations
   entering layer l. For l = 1 that is the raw input; their normalisation is
   1/(n-1), and here it is 1/n. For each hidden permutation they maximise
   tr(P W_b' Sigma W_a^T), using only the incoming weights and no biases.
   Objective implemented here. Hidden permutations are P_1..P_{L-1} with
   P_0 = I (input) and P_L = I (logits), and Q_k = diag(P_k, 1). Each layer
   is augmented as What_l = [W_l, b_l] and
       Mt_{l-1} = [[Sigma_{l-1}, mu_{l-1}], [mu_{l-1}^T, 1]],
   with Sigma = (1/n) H^T H, mu = (1/n) H^T 1 and H = h^a_{l-1}(X). So Mt is
   the second moment of the input [h; 1], and the bias is the weight on a
   constant input 1. Permuted b is What^pi_l = P_l What^b_l Q_{l-1}^T. The
   paper's distance is then
       D(P) = sum_l ||(What^a_l - What^pi_l) Mt_{l-1}^{1/2}||_F^2
            = sum_l (1/n) sum_x ||(W^a_l h + b^a_l) - (W^pi_l h + b^pi_l)||^2,
   the mean squared pre-activation gap when both layers read a's input h.
   D = c_a + N_b(P) - 2 J(P), where c_a = sum_l tr(What^a Mt What^a^T) and
   N_b(P) = sum_l tr(What^b_l Q^T Mt Q What^b_l^T). N_b is *quadratic* in
   P_{l-1} whenever Mt is not permutation invariant, so minimising D exactly
   is a QAP; the authors' notebook runs Frank-Wolfe on it. As in Git
   Re-Basin weight matching, what is maximised here is the cross term
       J(P) = sum_l < What^a_l Mt_{l-1} , P_l What^b_l Q_{l-1}^T >_F.
   Maximising J is the same as minimising D when Mt is proportional to I. J is linear in each P_k
   when the others are held fixed. With perm_k[i] = j meaning "unit i of
   aligned b is unit j of b", the step is
       perm_k = argmax_pi sum_i S_k[i, pi(i)],
       S_k = What^a_k Mt_{k-1} (What^b_k Q_{k-1}^T)^T              (incoming)
           + (Mt_k What^a_{k+1}^T)[:m_k, :] (P_{k+1} W^b_{k+1})    (outgoing).
   The step for P_k leaves layer k's own B-norm term unchanged, because a
   left permutation preserves it. So with `incoming_only=True` (the authors'
   variant) every step is an exact minimisation of that layer's D-term
   given P_{k-1}.
   Biases (`bias=`): "augmented" (default) as above. This also follows the
   authors' weight_matching_independent_layers_and_covariance:
   (W_a Sigma + b_a mu^T) W_b^T + (W_a mu + b_a) b_b^T. "plain" sets mu = 0,
   so biases enter as Git Re-Basin's <b_a, P b_b>. "none" drops the bias
   row and column, as the authors' "WM (ours)" does. `centered=True` uses
   the covariance Cov(h) for Sigma and sets mu = 0.
   Coordinate descent: each sweep visits the hidden layers in `order`
   (default 0..L-2) and solves that layer's assignment with the others
   fixed. A new permutation is kept only when its value beats the current
   one by more than 1e-12 * max(1, |current|), so J never decreases. The
   loop stops after a sweep with no change, or after `sweeps` sweeps. With
   incoming_only the steps maximise each layer's own term, not J, so J may
   drop; the default order converges within 2 sweeps.
   Caveat for tests: J is not D, so a planted permutation need not
   maximise J. I tried 154 random planted 20-16-12-5 and 30-24-24-24-10
   pairs with no dead units. Full-J ascent missed the inverse 2 times
   (augmented), 1 time (plain) and 9 times (none), and every miss ended with
   J(found) > J(truth). incoming_only and activation matching recovered it
   every time. Dead units make both methods worse: zero rows in Sigma, and
   ties in C.

A model is a list [(W1, b1), ..., (WL, bL)] with W_l of shape (out, in), ReLU
between layers, none after the last. X has shape (n, d). A permutation is an
int64 index array `perm` with aligned_b unit i = b unit perm[i]. When b is a
with a planted permutation sigma applied, the answer is argsort(sigma).
"""
import numpy as np
from scipy.optimize import linear_sum_assignment

_STD_EPS = 1e-12
_TOL = 1e-12


# --------------------------------------------------------------- basic MLP --
def _f64(layers):
    return [(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)) for W, b in layers]


def forward(layers, X):
    """Logits: h <- relu(W h + b) on hidden layers, W h + b on the last."""
    h = np.asarray(X, dtype=np.float64)
    for k, (W, b) in enumerate(_f64(layers)):
        h = h @ W.T + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def hidden_activations(layers, X, pre_activation=False):
    """Per hidden layer, an (n, width) array: post-ReLU, or W h + b if pre_activation."""
    h = np.asarray(X, dtype=np.float64)
    out = []
    for W, b in _f64(layers)[:-1]:
        z = h @ W.T + b
        h = np.maximum(z, 0.0)
        out.append(z if pre_activation else h)
    return out


def layer_inputs(layers, X):
    """h_0 = X, h_1, ..., h_{L-1}: the (post-ReLU) input of every layer."""
    return [np.asarray(X, dtype=np.float64)] + hidden_activations(layers, X)


def permute_mlp(layers, perms):
    """Rows of W_l, b_l and columns of W_{l+1} reordered by perms[l] (hidden l)."""
    layers = _f64(layers)
    assert len(perms) == len(layers) - 1
    out, prev = [], None
    for k, (W, b) in enumerate(layers):
        if prev is not None:
            W = W[:, prev]
        if k < len(layers) - 1:
            p = np.asarray(perms[k], dtype=np.int64)
            W, b, prev = W[p], b[p], p
        out.append((W.copy(), b.copy()))
    return out


def _lap(S):
    """argmax_pi sum_i S[i, pi(i)] as an int64 index array."""
    rows, cols = linear_sum_assignment(S, maximize=True)
    assert np.array_equal(rows, np.arange(S.shape[0]))
    return cols.astype(np.int64)


# ---------------------------------------------------- 1. activation matching --
def standardize(A, eps=_STD_EPS):
    """Per column z-score over rows (ddof=0); columns with std <= eps become 0."""
    A = np.asarray(A, dtype=np.float64)
    mu, sd = A.mean(axis=0), A.std(axis=0)
    return (A - mu) / np.where(sd > eps, sd, np.inf)


def cross_correlation(A, B, eps=_STD_EPS):
    """C[i, j] = Pearson corr(A[:, i], B[:, j]) over the n rows."""
    return standardize(A, eps).T @ standardize(B, eps) / A.shape[0]


def activation_matching(layers_a, layers_b, X, pre_activation=False, eps=_STD_EPS):
    """Tatro et al. neuron alignment: one argmax-correlation LAP per hidden layer."""
    acts_a = hidden_activations(layers_a, X, pre_activation)
    acts_b = hidden_activations(layers_b, X, pre_activation)  # unpermuted b: see docstring
    return [_lap(cross_correlation(A, B, eps)) for A, B in zip(acts_a, acts_b)]


# ------------------------------------- 2. covariance-weighted weight matching --
def input_moments(layers_a, X, bias="augmented", centered=False):
    """Mt_{l-1} for l = 1..L from model a's layer inputs (see module docstring)."""
    assert bias in ("augmented", "plain", "none")
    mats = []
    for H in layer_inputs(layers_a, X):
        n, m = H.shape
        mu = H.mean(axis=0)
        Sig = (H - mu).T @ (H - mu) / n if centered else H.T @ H / n
        if bias == "none":
            mats.append(Sig)
            continue
        Mt = np.zeros((m + 1, m + 1))
        Mt[:m, :m] = Sig
        if bias == "augmented" and not centered:
            Mt[:m, m] = Mt[m, :m] = mu
        Mt[m, m] = 1.0
        mats.append(Mt)
    return mats


def _aug(W, b, bias):
    return W if bias == "none" else np.hstack([W, b[:, None]])


def _permuted_b_aug(layers_b, perms, l, bias):
    """P_l What^b_l Q_{l-1}^T for layer l (0-based)."""
    W, b = layers_b[l]
    if l > 0:
        W = W[:, perms[l - 1]]
    if l < len(layers_b) - 1:
        W, b = W[perms[l]], b[perms[l]]
    return _aug(W, b, bias)


def objective(layers_a, layers_b, X, perms, bias="augmented", centered=False, moments=None):
    """J(P) = sum_l <What^a_l Mt_{l-1}, P_l What^b_l Q_{l-1}^T>_F, the value maximised."""
    A, B = _f64(layers_a), _f64(layers_b)
    Ms = input_moments(A, X, bias, centered) if moments is None else moments
    return float(sum(np.sum((_aug(*A[l], bias) @ Ms[l]) * _permuted_b_aug(B, perms, l, bias))
                     for l in range(len(A))))


def distance(layers_a, layers_b, X, perms, bias="augmented", centered=False, moments=None):
    """The paper's D(P) = sum_l tr(Delta_l Mt_{l-1} Delta_l^T), Delta_l = What^a_l - What^pi_l."""
    A, B = _f64(layers_a), _f64(layers_b)
    Ms = input_moments(A, X, bias, centered) if moments is None else moments
    tot = 0.0
    for l in range(len(A)):
        D = _aug(*A[l], bias) - _permuted_b_aug(B, perms, l, bias)
        tot += float(np.sum((D @ Ms[l]) * D))
    return tot


def score_matrix(layers_a, layers_b, perms, k, moments, bias="augmented", incoming_only=False):
    """S_k with J(P_k = pi) = const + sum_i S_k[i, pi(i)], others fixed (docstring)."""
    A, B = _f64(layers_a), _f64(layers_b)
    Wb, bb = B[k]
    if k > 0:
        Wb = Wb[:, perms[k - 1]]  # What^b_k Q_{k-1}^T, rows still in b's own order
    S = (_aug(*A[k], bias) @ moments[k]) @ _aug(Wb, bb, bias).T
    if not incoming_only:
        m = A[k][0].shape[0]
        Wb_next = B[k + 1][0]
        if k + 1 < len(B) - 1:
            Wb_next = Wb_next[perms[k + 1]]
        S = S + (moments[k + 1] @ _aug(*A[k + 1], bias).T)[:m, :] @ Wb_next
    return S


def cov_weighted_weight_matching(layers_a, layers_b, X, sweeps=100, order=None,
                                 bias="augmented", centered=False, incoming_only=False,
                                 return_history=False):
    """Coordinate ascent on J; returns perms (and J after every step if asked)."""
    A, B = _f64(layers_a), _f64(layers_b)
    Ms = input_moments(A, X, bias, centered)
    sizes = [W.shape[0] for W, _ in A[:-1]]
    perms = [np.arange(m, dtype=np.int64) for m in sizes]
    # order: a list of layer indices, or a function sweep -> that sweep's list (a seeded random order)
    orders = (lambda s: list(range(len(sizes)))) if order is None else (
        order if callable(order) else (lambda s: list(order)))
    history = [objective(A, B, X, perms, bias, centered, moments=Ms)]
    for sweep in range(sweeps):
        changed = False
        for k in orders(sweep):
            S = score_matrix(A, B, perms, k, Ms, bias, incoming_only)
            new = _lap(S)
            rows = np.arange(sizes[k])
            old_val, new_val = S[rows, perms[k]].sum(), S[rows, new].sum()
            if new_val - old_val > _TOL * max(1.0, abs(old_val)):
                perms[k] = new
                changed = True
            history.append(objective(A, B, X, perms, bias, centered, moments=Ms))
        if not changed:
            break
    return (perms, history) if return_history else perms


# ------------------------------------------------------------------ self-test --
def _random_mlp(rng, dims):
    return [(rng.normal(size=(o, i)) / np.sqrt(i), 0.3 * rng.normal(size=o))
            for i, o in zip(dims[:-1], dims[1:])]


def _self_test():
    rng = np.random.default_rng(3)  # seed with no dead unit (seed 0 has one)
    dims, n = (20, 16, 12, 5), 200
    X = rng.normal(size=(n, dims[0]))
    a = _random_mlp(rng, dims)
    for H in hidden_activations(a, X):  # no dead / constant unit, so recovery is well posed
        assert H.std(axis=0).min() > 1e-3
    planted = [rng.permutation(m) for m in dims[1:-1]]
    b = permute_mlp(a, planted)
    truth = [np.argsort(p) for p in planted]

    # permute_mlp keeps the function; undoing the plant restores a exactly.
    assert np.max(np.abs(forward(b, X) - forward(a, X))) < 1e-10
    back = permute_mlp(b, truth)
    assert all(np.array_equal(Wa, Wr) and np.array_equal(ba, br) for (Wa, ba), (Wr, br) in zip(a, back))

    # A constant unit standardizes to exactly 0, hence zero correlation with everything.
    Z = standardize(np.column_stack([np.full(n, 0.7), X[:, 0]]))
    assert np.all(Z[:, 0] == 0.0) and np.isclose(Z[:, 1].std(), 1.0)

    # 1. activation matching, post- and pre-activation.
    for pre in (False, True):
        got = activation_matching(a, b, X, pre_activation=pre)
        assert all(np.array_equal(g, t) for g, t in zip(got, truth)), pre
        C = cross_correlation(*[hidden_activations(m, X, pre)[0] for m in (a, b)])
        assert np.allclose(C[np.arange(dims[1]), got[0]], 1.0)

    # 2. covariance-weighted weight matching, every variant.
    Ms = input_moments(a, X)
    H = layer_inputs(a, X)
    assert np.allclose(Ms[1][:-1, :-1], H[1].T @ H[1] / n) and np.allclose(Ms[1][:-1, -1], H[1].mean(0))
    for bias in ("augmented", "plain", "none"):
        for centered in (False, True):
            for inc in (False, True):
                kw = dict(bias=bias, centered=centered)
                got, hist = cov_weighted_weight_matching(a, b, X, incoming_only=inc,
                                                         return_history=True, **kw)
                assert all(np.array_equal(g, t) for g, t in zip(got, truth)), (bias, centered, inc)
                if not inc:  # J is the ascended quantity only in the full mode
                    assert all(y >= x - 1e-9 * max(1.0, abs(x)) for x, y in zip(hist, hist[1:]))
                assert abs(distance(a, b, X, got, **kw)) < 1e-10
                Mk = input_moments(a, X, **kw)
                self_J = sum(np.sum((_aug(W, c, bias) @ M) * _aug(W, c, bias)) for (W, c), M in zip(a, Mk))
                assert np.isclose(objective(a, b, X, got, **kw), self_J)

    # D with augmented second moments is the mean squared pre-activation gap on a's inputs.
    c = _random_mlp(rng, dims)
    p = [rng.permutation(m) for m in dims[1:-1]]
    cp = permute_mlp(c, p)
    gap = sum(np.sum(((Hl @ Wa.T + ba) - (Hl @ Wc.T + bc)) ** 2) / n
              for Hl, (Wa, ba), (Wc, bc) in zip(H, a, cp))
    assert np.isclose(distance(a, c, X, p), gap)
    Bq = _f64(c)  # D = c_a + N_b(P) - 2 J(P)

    def sq(Y, M):
        return np.sum((Y @ M) * Y)
    c_a = sum(sq(_aug(*a[l], "augmented"), Ms[l]) for l in range(len(a)))
    N_b = sum(sq(_permuted_b_aug(Bq, p, l, "augmented"), Ms[l]) for l in range(len(a)))
    assert np.isclose(distance(a, c, X, p), c_a + N_b - 2 * objective(a, c, X, p))

    # Score matrices: J differences equal S differences (checks the derivation).
    for inc in (False, True):
        for k in range(len(dims) - 2):
            S = score_matrix(a, c, p, k, Ms, incoming_only=inc)
            for _ in range(3):
                q = [x.copy() for x in p]
                q[k] = rng.permutation(dims[k + 1])
                rows = np.arange(dims[k + 1])
                dS = S[rows, q[k]].sum() - S[rows, p[k]].sum()
                if inc:  # only layer k's own term enters the step
                    def own(pp):
                        return np.sum((_aug(*a[k], "augmented") @ Ms[k])
                                      * _permuted_b_aug(_f64(c), pp, k, "augmented"))
                    dJ = own(q) - own(p)
                else:
                    dJ = objective(a, c, X, q) - objective(a, c, X, p)
                assert np.isclose(dS, dJ, rtol=1e-9, atol=1e-9), (k, inc)

    # Unplanted pair: monotone J over several sweeps, custom order.
    _, hist = cov_weighted_weight_matching(a, c, X, order=[1, 0], return_history=True)
    assert all(y >= x - 1e-9 * max(1.0, abs(x)) for x, y in zip(hist, hist[1:]))
    print(f"self-test OK: unplanted J {hist[0]:.4f} -> {hist[-1]:.4f} in {len(hist) - 1} steps")


if __name__ == "__main__":
    _self_test()
