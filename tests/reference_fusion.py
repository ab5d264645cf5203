"""Independent reference implementation of MLP fusion, used as a test oracle.

Written from the papers' formulas only (numpy / scipy / POT, no torch):
  * OTFusion: Singh & Jaggi, "Model Fusion via Optimal Transport", NeurIPS 2020.
  * Layer-wise Wasserstein barycenter fusion: Akash, Li & Trillos,
    "Wasserstein Barycenter-based Model Fusion and Linear Mode Connectivity
    of Neural Networks", ICLR 2023.

A model is a list of (W, b) float64 arrays, W of shape (m_l, m_{l-1}).
Couplings T have shape (target width n, source width m) and total mass 1.
"""
import numpy as np
import ot


def forward(layers, x):
    """Logits of the MLP: h <- relu(W h + b) for hidden layers, W h + b last."""
    h = np.asarray(x, dtype=np.float64)
    for k, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return h


def accuracy(layers, x, y):
    """Fraction of samples whose argmax logit equals the label."""
    return float(np.mean(np.argmax(forward(layers, x), axis=1) == np.asarray(y)))


def cost_matrix(target_feats, model_feats):
    """C[j, j'] = ||target_feats[j] - model_feats[j']||^2 (squared Euclidean)."""
    A = np.asarray(target_feats, dtype=np.float64)
    B = np.asarray(model_feats, dtype=np.float64)
    C = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(C, 0.0)


def _lambdas(weights, k):
    lam = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, float)
    return lam / lam.sum()


def _emd(C):
    """Exact OT plan between uniform(n) and uniform(m) for cost C (ot.emd)."""
    n, m = C.shape
    return ot.emd(np.full(n, 1.0 / n), np.full(m, 1.0 / m),
                  np.ascontiguousarray(C, dtype=np.float64))


def _north_west(n, m):
    """North-west corner (monotone) plan between uniform(n) and uniform(m)."""
    P = np.zeros((n, m))
    r, c = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    i = j = 0
    while i < n and j < m:
        t = min(r[i], c[j])
        P[i, j] += t
        r[i] -= t
        c[j] -= t
        if r[i] <= 1e-15:
            i += 1
        if c[j] <= 1e-15:
            j += 1
    return P


def _align_inputs(W, T_prev):
    """W_hat = W @ (m_{l-1} T_prev).T, m_{l-1} = source input width of W."""
    return W @ (T_prev.shape[1] * T_prev).T


def otfusion(models, weights=None):
    """OTFusion (Singh & Jaggi 2020), 'weight' ground metric, model 0 = target.

    Hidden layer l, model i: W_hat_i = W_i (m_{l-1} T_prev_i)^T, feature of a
    unit = [W_hat_i[j], b_i[j]], T_i = emd(u_n, u_m, ||F_0[j] - F_i[j']||^2),
    fused W = sum_i lam_i (n T_i) W_hat_i, b = sum_i lam_i (n T_i) b_i.
    Last layer: T_i = I/m_L (only its inputs are aligned).
    Returns (fused_layers, couplings[hidden layer][model]).
    """
    K, L = len(models), len(models[0])
    lam = _lambdas(weights, K)
    m0 = models[0][0][0].shape[1]
    T_prev = [np.eye(m0) / m0 for _ in range(K)]
    fused, couplings = [], []
    for l in range(L):
        W_hat = [_align_inputs(models[i][l][0], T_prev[i]) for i in range(K)]
        bs = [models[i][l][1] for i in range(K)]
        n = W_hat[0].shape[0]
        if l == L - 1:
            Ts = [np.eye(n) / n for _ in range(K)]
        else:
            F0 = np.hstack([W_hat[0], bs[0][:, None]])
            Ts = [np.eye(n) / n] + [
                _emd(cost_matrix(F0, np.hstack([W_hat[i], bs[i][:, None]])))
                for i in range(1, K)]
            couplings.append(Ts)
        W = sum(lam[i] * (n * Ts[i]) @ W_hat[i] for i in range(K))
        b = sum(lam[i] * (n * Ts[i]) @ bs[i] for i in range(K))
        fused.append((W, b))
        T_prev = Ts
    return fused, couplings


def wasserstein_barycenter(models, widths, weights=None, iters=100):
    """Layer-wise Wasserstein-barycenter fusion (Akash et al., ICLR 2023).

    Hidden layer l (previous couplings fixed): F_i = [W_i (m^i_{l-1} T_prev_i)^T | b_i];
    F_t initialised to F_0 (or (n P_NW) F_0 if widths differ); iterate
    T_i = emd(u_n, u_{m_i}, ||F_t[j] - F_i[j']||^2), F_t = sum_i lam_i (n T_i) F_i
    until the couplings stop changing. Last layer: T_i = I/m_L, plain average.
    Returns (fused_layers, couplings[hidden layer][model]).
    """
    K, L = len(models), len(models[0])
    lam = _lambdas(weights, K)
    m0 = models[0][0][0].shape[1]
    T_prev = [np.eye(m0) / m0 for _ in range(K)]
    fused, couplings = [], []
    for l in range(L):
        W_hat = [_align_inputs(models[i][l][0], T_prev[i]) for i in range(K)]
        bs = [models[i][l][1] for i in range(K)]
        if l == L - 1:
            fused.append((sum(lam[i] * W_hat[i] for i in range(K)),
                          sum(lam[i] * bs[i] for i in range(K))))
            break
        F = [np.hstack([W_hat[i], bs[i][:, None]]) for i in range(K)]
        n = int(widths[l])
        Ft = F[0].copy() if n == F[0].shape[0] else (n * _north_west(n, F[0].shape[0])) @ F[0]
        Ts = None
        for _ in range(iters):
            new = [_emd(cost_matrix(Ft, F[i])) for i in range(K)]
            Ft = sum(lam[i] * (n * new[i]) @ F[i] for i in range(K))
            done = Ts is not None and all(
                np.max(np.abs(a - c)) < 1e-9 for a, c in zip(new, Ts))
            Ts = new
            if done:
                break
        fused.append((Ft[:, :-1].copy(), Ft[:, -1].copy()))
        couplings.append(Ts)
        T_prev = Ts
    return fused, couplings
