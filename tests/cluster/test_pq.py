"""Product quantization by activation reconstruction: the EM against independent least squares, and the command."""

import numpy as np
import pytest

from tests.conftest import CALIBRATION, error_lines, run_tool
from tfcompress.cluster import pq
from tfcompress.errors import TfcError


def _problem(seed=0, m=12, d=4, cout=40, rows=600):
    """Subvectors and correlated input rows x (float network) and x^ (slightly perturbed, as below a quantized layer)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(m, d, cout))
    mix = rng.normal(size=(d, d))
    xf = rng.normal(size=(rows, m, d)) @ mix  # Correlated within a block, as neighbouring pixels are.
    xq = xf + 0.05 * rng.normal(size=xf.shape)
    return v, xf, xq


def _activation_error(v, xf, xq, codebook, assignment):
    approx = codebook[assignment].transpose(0, 2, 1)
    return float(np.sum((np.einsum("pmd,mdj->pj", xf, v) - np.einsum("pmd,mdj->pj", xq, approx)) ** 2))


def _per_block_error(v, xf, xq, codebook, assignment):
    """The EM's objective: sum_ij || x_i v_ij - x^_i c_a(ij) ||^2 (block terms, no cross terms)."""
    approx = codebook[assignment].transpose(0, 2, 1)
    return float(np.sum((np.einsum("pmd,mdj->pmj", xf, v) - np.einsum("pmd,mdj->pmj", xq, approx)) ** 2))


def test_m_step_is_the_least_squares_codeword():
    v, xf, xq = _problem()
    g_hat = np.einsum("pmd,pme->mde", xq, xq)
    h = np.einsum("pmd,pme->mde", xq, xf)
    codebook, assignment = pq.em(v, g_hat, h, k=8, iterations=3, rng=np.random.default_rng(0))
    assert codebook.shape == (8, 4) and assignment.shape == (12, 40) and len(np.unique(assignment)) == 8
    # Independent reference: stack every (row, block, output) equation x^_i c = x_i v_ij of a codeword and solve
    # them with numpy's least squares.
    for c in range(8):
        blocks, outs = np.nonzero(assignment == c)
        a = np.concatenate([xq[:, i, :] for i in blocks])
        b = np.concatenate([xf[:, i, :] @ v[i, :, j] for i, j in zip(blocks, outs)])
        np.testing.assert_allclose(codebook[c], np.linalg.lstsq(a, b, rcond=None)[0], rtol=1e-6, atol=1e-8)


def test_em_beats_weight_space_kmeans_on_activations():
    v, xf, xq = _problem(seed=1)
    g_hat = np.einsum("pmd,pme->mde", xq, xq)
    h = np.einsum("pmd,pme->mde", xq, xf)
    codebook, assignment = pq.em(v, g_hat, h, k=16, iterations=20, rng=np.random.default_rng(0))
    # Weight-space k-means (the plain PQ baseline) on the same subvectors, with identity inputs.
    eye = np.broadcast_to(np.eye(4), g_hat.shape).copy()
    kcb, kas = pq.em(v, eye, eye, k=16, iterations=20, rng=np.random.default_rng(0))
    ours, baseline = _activation_error(v, xf, xq, codebook, assignment), _activation_error(v, xf, xq, kcb, kas)
    assert ours < 0.9 * baseline, (ours, baseline)


def test_objective_never_rises_and_no_codeword_stays_empty():
    v, xf, xq = _problem(seed=2)
    v[:, :, 20:] = v[:, :, :20]  # Duplicated subvectors make empty clusters likely.
    g_hat = np.einsum("pmd,pme->mde", xq, xq)
    h = np.einsum("pmd,pme->mde", xq, xf)
    errors = []
    for it in (1, 2, 4, 8):
        cb, asg = pq.em(v, g_hat, h, k=32, iterations=it, rng=np.random.default_rng(0))
        errors.append(_per_block_error(v, xf, xq, cb, asg))
    assert all(b <= a * (1 + 1e-3) for a, b in zip(errors, errors[1:])), errors
    assert len(np.unique(asg)) == 32


def test_subvector_layouts_round_trip():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(3, 3, 5, 7))
    sv = pq.subvectors(conv, "spatial", 9)
    assert sv.shape == (5, 9, 7)
    np.testing.assert_array_equal(sv[2, :, 4], conv[:, :, 2, 4].reshape(-1))  # One (input, filter) 3x3 slice.
    np.testing.assert_array_equal(pq.from_subvectors(sv, conv.shape, "spatial"), conv)
    dense = rng.normal(size=(12, 3))
    sv = pq.subvectors(dense, "channel", 4)
    np.testing.assert_array_equal(sv[1, :, 2], dense[4:8, 2])
    np.testing.assert_array_equal(pq.from_subvectors(sv, dense.shape, "channel"), dense)


def test_block_size_must_divide(digits):
    model, _ = digits
    with pytest.raises(TfcError, match="block size 5 does not divide its 48 input channels"):
        pq._layers(model, pq.PQConfig(block_size=5, layers=("dense",)))  # pylint: disable=protected-access


def test_pq_command_shares_codewords_and_counts_storage(tmp_path, digits):
    import keras
    out = tmp_path / "pq.keras"
    proc = run_tool("pq", f"--output={out}", "--centroids=32", "--iterations=5", "--layer_epochs=1", "--epochs=1",
                    f"--train_images={CALIBRATION}", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "storage:" in proc.stdout
    model = keras.saving.load_model(out, safe_mode=True)
    original, _ = digits
    # A quantized 3x3 conv holds at most 32 distinct 3x3 slices (the codewords), all shared exactly.
    kernel = model.get_layer("conv2d_4").kernel.numpy()
    slices = kernel.transpose(2, 3, 0, 1).reshape(-1, 9)
    assert len(np.unique(slices, axis=0)) <= 32
    assert len(np.unique(original.get_layer("conv2d_4").kernel.numpy().transpose(2, 3, 0, 1).reshape(-1, 9),
                         axis=0)) == 1024
    # Storage: the float32 size counts every parameter; the compressed one is smaller.
    line = next(l for l in proc.stdout.splitlines() if l.startswith("storage:")).split()
    float_bytes, compressed_bytes = int(line[1]), int(line[5])
    assert float_bytes == 4 * sum(int(np.prod(w.shape)) for w in model.weights)
    assert compressed_bytes < float_bytes


def test_pq_bad_block_size_from_the_command(tmp_path):
    out = tmp_path / "pq.keras"
    proc = run_tool("pq", f"--output={out}", "--block_size=5", "--layers=dense", "--epochs=0", "--layer_epochs=0",
                    "--noprogress")
    assert proc.returncode == 1 and "does not divide its 48 input channels" in error_lines(proc)[0]
    assert not out.exists()


if __name__ == "__main__":
    import sys
    sys.exit(pytest.main([__file__, "-q"]))
