"""Why the learned stages lose: what Stage I's prior knows, and which way Stage II's loss pulls.

On one demo-world fold (``bench/demo_world.py``; fit on the training rows, measured on held-out
rows), three measurements of the learned stages of AnisoAlign (``docs/method.md`` §4–§6):

1. **Stage I prior vs a uniform prior.** The block phases ``θ`` of held-out image rows in the joint
   frame: their circular concentration per block (``|mean e^{imθ}|``, m = 1, 2; about
   ``1/√n`` for uniform phases), and the prior's held-out log-likelihood ratio against the uniform
   density on the torus, per block, ``−E(θ, ℓ) − log E_u[exp(−E(u, ℓ))]`` (``u`` uniform phases,
   importance sampled per row; the estimate is biased upward, so ≤ 0 means the prior does not
   beat uniform).
2. **Stage II loss balance.** The refinement's loss terms (MMD to the images, relational and
   instance terms against the source text, the prior energy) evaluated on held-out rows at the
   centroid shift, at the closed form (``knn_budget`` null), and after the learned refinement,
   with the default weights: which point the loss prefers.
3. **Calibration after refinement.** How much of the refinement's mean displacement the final
   centroid calibration cancels.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/learned_diagnosis.py [--rows 60000] [--steps 1000]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import _env  # noqa: E402,F401 - before numpy: one BLAS thread (bench/_env.py)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aniso.methods import get_aligner  # noqa: E402
from aniso.numeric.arrays import l2_normalize  # noqa: E402

logger = logging.getLogger("bench.learned_diagnosis")


def phases(x: np.ndarray, frame, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from aniso.methods.anisoalign.polar import EPS64, to_polar

    return to_polar(((x - centre) @ frame.U) @ frame.R, EPS64)


def loglik_ratio(prior, theta: np.ndarray, ell: np.ndarray, samples: int, seed: int) -> float:
    """Mean over rows of ``log p(θ|ℓ) − log u(θ)``, per block (importance sampled normaliser)."""
    import torch

    rng = np.random.default_rng(seed)
    k = theta.shape[1]
    out = []
    with torch.no_grad():
        for r in range(theta.shape[0]):
            u = torch.as_tensor(rng.uniform(-np.pi, np.pi, size=(samples, k)), dtype=torch.float32)
            el = torch.as_tensor(np.repeat(ell[r:r + 1], samples, 0), dtype=torch.float32)
            eu = prior.energy(u, el).double().numpy()
            e = float(prior.energy(torch.as_tensor(theta[r:r + 1], dtype=torch.float32),
                                   torch.as_tensor(ell[r:r + 1], dtype=torch.float32))[0])
            log_z = np.logaddexp.reduce(-eu) - np.log(samples)
            out.append(-e - log_z)
    return float(np.mean(out)) / k


def loss_terms(subs: np.ndarray, text: np.ndarray, image: np.ndarray, frame, prior, seed: int,
               batches: int = 8, batch: int = 1024) -> dict[str, float]:
    """Stage II's loss terms (``aniso/methods/anisoalign/refine.py``) for given (uncalibrated) substitutes."""
    import torch

    from aniso.methods.anisoalign.polar import EPS32
    from aniso.methods.anisoalign.refine import _cosmat, _mmd2, to_polar_torch

    rng = np.random.default_rng(seed)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    mu_t, mu_i, u_mat, r_mat = f(frame.mu_text), f(frame.mu_image), f(frame.U), f(frame.R)
    acc: dict[str, list[float]] = {}
    with torch.no_grad():
        for _ in range(batches):
            it, ii = rng.choice(len(subs), batch, replace=False), rng.choice(len(image), batch, replace=False)
            xh, x, img = f(subs[it]), f(text[it]), f(image[ii])
            cen, src = xh - mu_i, x - mu_t
            a_h, a_i = cen @ u_mat, (img - mu_i) @ u_mat
            feat_h = torch.cat([a_h, (cen - a_h @ u_mat.T).norm(dim=1, keepdim=True)], 1)
            feat_i = torch.cat([a_i, ((img - mu_i) - a_i @ u_mat.T).norm(dim=1, keepdim=True)], 1)
            k = u_mat.shape[1] // 2
            th2, l2 = to_polar_torch(a_h @ r_mat, EPS32)
            terms = {"dist": _mmd2(feat_h, feat_i), "rel": ((_cosmat(cen) - _cosmat(src)) ** 2).mean(),
                     "inst": (1 - torch.nn.functional.cosine_similarity(cen, src, dim=1)).mean(),
                     "prior": (prior.energy(th2, l2) + prior.radial_nll(l2)).mean() / k}
            for key, v in terms.items():
                acc.setdefault(key, []).append(float(v))
    return {key: float(np.mean(v)) for key, v in acc.items()}


def prior_term(prior, x: np.ndarray, frame) -> float:
    """Stage II's prior term, ``mean(E(θ, ℓ) + radial NLL(ℓ)) / K``, of rows ``x`` (unit norm)."""
    import torch

    th, el = phases(x, frame, frame.mu_image)
    with torch.no_grad():
        t, e = torch.as_tensor(th, dtype=torch.float32), torch.as_tensor(el, dtype=torch.float32)
        return float((prior.energy(t, e) + prior.radial_nll(e)).mean()) / th.shape[1]


def prior_only(args: argparse.Namespace, cf, text: np.ndarray, image: np.ndarray, train: np.ndarray,
               test: np.ndarray) -> None:
    from aniso.methods.anisoalign.polar import EPS64, to_polar
    from aniso.methods.anisoalign.prior import fit_prior

    frame = cf.frame
    sample = np.sort(np.random.default_rng(args.seed).choice(train, min(20000, train.size), replace=False))
    th, el = to_polar(((image[sample] - frame.mu_image) @ frame.U) @ frame.R, EPS64)
    prior = fit_prior(th, el, steps=args.steps, seed=args.seed)
    shift = get_aligner("centroid").fit(text[train], image[train])
    rows = {"real images (held out)": image[test], "real images (Stage I's own sample)": image[sample],
            "centroid shift": l2_normalize(shift.premap(text[test])),
            "closed form (knn_budget null)": l2_normalize(cf.premap(text[test])),
            "raw text": text[test]}
    print("| rows | Stage II prior term (energy + radial NLL) / K |\n|---|---|")
    for name, x in rows.items():
        print(f"| {name} | {prior_term(prior, x, frame):.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--steps", type=int, default=1000, help="Stage I and Stage II steps")
    ap.add_argument("--lik-rows", type=int, default=300)
    ap.add_argument("--lik-samples", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior-only", action="store_true",
                    help="fit Stage I alone (on 20,000 training images, as the fit does) and print its energy term "
                         "for the real held-out images, the closed form and the shift")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from demo_world import demo_world
    from quality import make_folds

    from aniso.methods.anisoalign.prior import PhasePrior

    torch.set_num_threads(1)
    text, image = demo_world(args.rows)
    text, image = l2_normalize(text.astype(np.float64)), l2_normalize(image.astype(np.float64))
    test = make_folds(image, 3, args.seed)[0]
    train = np.setdiff1d(np.arange(len(text)), test)
    cf = get_aligner("anisoalign", knn_budget=None).fit(text[train], image[train], seed=args.seed)
    if args.prior_only:
        prior_only(args, cf, text, image, train, test)
        return
    t0 = time.perf_counter()
    learned = get_aligner("anisoalign", knn_budget=None, learned=True, prior_steps=args.steps,
                          refine_steps=args.steps, torch_threads=1).fit(text[train], image[train], seed=args.seed)
    fit_s = time.perf_counter() - t0
    frame = learned.frame
    # 1. Stage I
    th_img, el_img = phases(image[test], frame, frame.mu_image)
    th_cf, _ = phases(l2_normalize(cf.premap(text[test])), frame, frame.mu_image)
    n = len(test)
    print(f"# Learned stages, demo world {args.rows:,} pairs, fold 0 of 3 ({len(train):,} fit / {n:,} held out); "
          f"learned fit {fit_s:.0f} s (1 thread, {args.steps}+{args.steps} steps)\n")
    print("## 1. Stage I: block phases of held-out rows (K = %d blocks)\n" % th_img.shape[1])
    print("| rows | mean |E e^{iθ}| | max | mean |E e^{2iθ}| | max | uniform level 1/√n |")
    print("|---|---|---|---|---|---|")
    for name, th in (("real images", th_img), ("closed-form substitutes", th_cf)):
        r1, r2 = np.abs(np.exp(1j * th).mean(0)), np.abs(np.exp(2j * th).mean(0))
        print(f"| {name} | {r1.mean():.4f} | {r1.max():.4f} | {r2.mean():.4f} | {r2.max():.4f} | {1 / np.sqrt(n):.4f} |")
    from aniso.methods.anisoalign.polar import EPS64, to_polar

    th_tr, el_tr = to_polar(((image[train] - frame.mu_image) @ frame.U) @ frame.R, EPS64)
    prior = PhasePrior(th_tr.shape[1], hidden=learned.params.prior_hidden)  # the fitted model's own prior
    prior.load_arrays(learned.prior_arrays)
    prior.eval()
    sel = np.random.default_rng(args.seed).choice(n, args.lik_rows, replace=False)
    th_sub, el_sub = phases(l2_normalize(cf.premap(text[test])), frame, frame.mu_image)
    ratio_img = loglik_ratio(prior, th_img[sel], el_img[sel], args.lik_samples, args.seed)
    ratio_sub = loglik_ratio(prior, th_sub[sel], el_sub[sel], args.lik_samples, args.seed)
    ratio_tr = loglik_ratio(prior, th_tr[sel], el_tr[sel], args.lik_samples, args.seed)
    print(f"\nPrior log-likelihood ratio vs uniform phases, nats per block ({args.lik_rows} rows, "
          f"{args.lik_samples} uniform samples each): held-out images {ratio_img:+.4f}, training images "
          f"{ratio_tr:+.4f}, closed-form substitutes {ratio_sub:+.4f}.\n")
    # 2. Stage II
    shift = get_aligner("centroid").fit(text[train], image[train])
    points = {"centroid shift": l2_normalize(shift.premap(text[test])),
              "closed form (knn_budget null)": l2_normalize(cf.premap(text[test])),
              "closed form + learned refinement": l2_normalize(learned.premap(text[test]))}
    w = {"dist": learned.params.w_dist, "rel": learned.params.w_rel, "inst": learned.params.w_inst,
         "prior": learned.params.w_prior}
    print("## 2. Stage II loss terms on held-out rows (uncalibrated premap; weights "
          + ", ".join(f"{k} {v:g}" for k, v in w.items()) + ")\n")
    print("| point | dist (MMD²) | rel | inst | prior | weighted total |")
    print("|---|---|---|---|---|---|")
    for name, subs in points.items():
        t = loss_terms(subs, text[test], image[test], frame, prior, args.seed)
        total = sum(w[k] * t[k] for k in w)
        print(f"| {name} | {t['dist']:.5f} | {t['rel']:.5f} | {t['inst']:.5f} | {t['prior']:.4f} | {total:.5f} |")
    # 3. calibration
    ref, base = points["closed form + learned refinement"], points["closed form (knn_budget null)"]
    disp = ref - base
    final_l, final_c = learned.transform(text[test]), cf.transform(text[test])
    print("\n## 3. Calibration after refinement\n")
    print(f"Refinement displacement (uncalibrated): mean row length {np.linalg.norm(disp, axis=1).mean():.4f}, "
          f"length of the mean {np.linalg.norm(disp.mean(0)):.4f}; after calibration: mean row length "
          f"{np.linalg.norm(final_l - final_c, axis=1).mean():.4f}, length of the mean "
          f"{np.linalg.norm((final_l - final_c).mean(0)):.4f}.")


if __name__ == "__main__":
    main()
