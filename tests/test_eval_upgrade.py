"""Helpers of the realistic-upgrade benchmark (tools/eval_upgrade.py) on tiny synthetic data:
reciprocal-rank fusion against a brute-force reference, the least-squares adapter, and the
hot-refresh curves' end points (r = 0: the old system, r = 1: the new one)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import bebr
from bebr import metrics
from bebr.datasets import exact_topk, l2_normalize

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eu():
    spec = importlib.util.spec_from_file_location("eval_upgrade", ROOT / "tools" / "eval_upgrade.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rrf_matches_a_brute_force_fusion(eu):
    rng = np.random.default_rng(0)
    lists = [rng.permutation(30)[None, :12].repeat(4, 0) for _ in range(2)]
    lists[1][2, 5:] = -1  # a short list
    got = eu.rrf(lists, k=7, c=60)
    for i in range(4):
        score = {}
        for ids in lists:
            for rank, j in enumerate(ids[i]):
                if j >= 0:
                    score[j] = score.get(j, 0) + 1 / (61 + rank)
        want = sorted(score, key=lambda j: (-score[j], j))[:7]
        assert got[i].tolist() == want


def test_ls_adapter_recovers_an_affine_map(eu):
    rng = np.random.default_rng(1)
    xn = rng.standard_normal((500, 12)).astype(np.float32)
    w = rng.standard_normal((12, 5)).astype(np.float32)
    xo = xn @ w + 0.5
    ad = eu.fit_ls_adapter(xn, xo)
    np.testing.assert_allclose(ad["w"], w, atol=1e-4)
    np.testing.assert_allclose(ad["b"], 0.5, atol=1e-4)
    np.testing.assert_allclose(eu.apply_ls(ad, xn[:3]), l2_normalize(xo[:3]), atol=1e-4)


def test_backfill_end_points_are_the_old_and_the_new_system(eu):
    rng = np.random.default_rng(2)
    spec = bebr.CodeSpec(16, 2)
    qspec = bebr.CodeSpec(16, eu.QB)
    n, nq = 300, 20
    xg, xq = rng.standard_normal((n, 16)), rng.standard_normal((nq, 16))
    old_g = spec.pack(spec.quantize_angle(xg.astype(np.float32)))
    new_g = spec.pack(spec.quantize_angle((xg + 0.3 * rng.standard_normal((n, 16))).astype(np.float32)))
    q_old = qspec.pack(qspec.quantize_angle(xq.astype(np.float32)))
    q_new = qspec.pack(qspec.quantize_angle((xq + 0.1).astype(np.float32)))
    truth = exact_topk(l2_normalize(xq.astype(np.float32)), l2_normalize(xg.astype(np.float32)), 10)
    ev = eu.Evaluator(spec, truth)
    ids_oo = ev.ids(q_old, old_g, query_bits=eu.QB)
    old_ok = ev.correct(ids_oo)
    curves = eu.backfill_curves(spec, truth, old_ok, q_new=q_new, q_old=q_old, q_head=q_new,
                                old_g=old_g, new_g=new_g, cal_old=(0.9, 0.05),
                                cal_head=(1.0, 0.0), fractions=(0.0, 0.5, 1.0))
    m_oo = metrics.recall_at_k(ids_oo, truth)
    m_nn = ev.m(q_new, new_g, query_bits=eu.QB)
    for name in ("old queries given", "naive merge", "RRF (k=60)"):
        c = curves[name]
        assert c["values"][0] == pytest.approx(m_oo) and c["flips"][0] == 0.0, name
        assert c["values"][-1] == pytest.approx(m_nn), name
    assert curves["new queries only"]["values"][-1] == pytest.approx(m_nn)
