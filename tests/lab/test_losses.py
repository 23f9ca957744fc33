"""The losses of [Khakzar2022] eq. 2, re-derived by hand in float64 on a tiny batch."""

from __future__ import annotations

import math

import pytest
import torch

from cxrexplain_lab.losses import CBFocal, Focal, label_counts, make_loss

LOGITS = torch.tensor([[2.0, -1.0, 0.3], [-0.5, 1.5, -2.0], [0.0, 0.7, 3.0], [1.2, -2.5, 0.1]],
                      dtype=torch.float64)
TARGETS = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float64)


def _by_hand(w_pos, w_neg) -> float:
    """[Khakzar2022] eq. 1 summed element by element in plain Python, averaged over the N x M entries."""
    total, count = 0.0, 0
    for i in range(LOGITS.shape[0]):
        for m in range(LOGITS.shape[1]):
            p = 1.0 / (1.0 + math.exp(-float(LOGITS[i, m])))
            y = float(TARGETS[i, m])
            total += -(w_pos(p, m) * y * math.log(p) + w_neg(p, m) * (1 - y) * math.log(1 - p))
            count += 1
    return total / count


def _counts() -> tuple[list[float], list[float]]:
    n_pos = [float(TARGETS[:, m].sum()) for m in range(3)]
    return n_pos, [TARGETS.shape[0] - n for n in n_pos]


def test_bce_matches_hand_and_torch():
    loss = make_loss("bce")(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(_by_hand(lambda p, m: 1.0, lambda p, m: 1.0), rel=1e-12)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)


def test_wbce_weights_from_label_counts():
    n_pos, n_neg = _counts()
    expected = _by_hand(lambda p, m: n_neg[m] / (n_pos[m] + n_neg[m]), lambda p, m: n_pos[m] / (n_pos[m] + n_neg[m]))
    loss = make_loss("wbce", label_frequencies=TARGETS)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # The same counts given as positive fractions and a sample count.
    frac = TARGETS.mean(dim=0)
    loss2 = make_loss("wbce", label_frequencies=frac, num_samples=4)(LOGITS, TARGETS)
    assert loss2.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.6, 1.0), (0.5, 0.5)])
def test_focal_matches_hand(alpha, gamma):
    expected = _by_hand(lambda p, m: alpha * (1 - p) ** gamma, lambda p, m: (1 - alpha) * p**gamma)
    loss = make_loss("focal", alpha=alpha, gamma=gamma)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_focal_with_gamma_zero_is_scaled_bce():
    # gamma = 0 and alpha = 1/2 weigh both terms by 1/2: exactly half of BCE; per term, alpha and 1 - alpha.
    bce = make_loss("bce", reduction="none")(LOGITS, TARGETS)
    focal = Focal(alpha=0.5, gamma=0.0, reduction="none")(LOGITS, TARGETS)
    torch.testing.assert_close(focal, 0.5 * bce, rtol=1e-14, atol=0)
    focal = Focal(alpha=0.3, gamma=0.0, reduction="none")(LOGITS, TARGETS)
    torch.testing.assert_close(focal, bce * (0.3 * TARGETS + 0.7 * (1 - TARGETS)), rtol=1e-14, atol=0)


@pytest.mark.parametrize("beta", [0.9999, 0.9, 0.5])
def test_cb_focal_matches_hand(beta):
    n_pos, n_neg = _counts()
    gamma = 2.0

    def cb(n: float) -> float:
        return (1 - beta) / (1 - beta**n)

    expected = _by_hand(lambda p, m: cb(n_pos[m]) * (1 - p) ** gamma, lambda p, m: cb(n_neg[m]) * p**gamma)
    loss = make_loss("cb_focal", label_frequencies=TARGETS, beta=beta, gamma=gamma)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_cb_focal_weight_tends_to_inverse_count():
    # (1 - beta) / (1 - beta^N) -> 1 / N as beta -> 1 (Cui et al.: effective number -> N).
    loss = CBFocal(torch.tensor([4.0, 10.0]), torch.tensor([96.0, 90.0]), beta=1 - 1e-9)
    torch.testing.assert_close(loss.cb_pos, torch.tensor([1 / 4, 1 / 10], dtype=torch.float64), rtol=1e-6, atol=0)


def test_reductions_and_gradients():
    logits = LOGITS.clone().requires_grad_(True)
    per = make_loss("focal", reduction="none")(logits, TARGETS)
    assert per.shape == LOGITS.shape
    total = make_loss("focal", reduction="sum")(logits, TARGETS)
    assert total.item() == pytest.approx(per.sum().item(), rel=1e-12)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_large_logits_stay_finite():
    logits = torch.tensor([[80.0, -80.0]], dtype=torch.float64)
    for name in ("bce", "focal"):
        out = make_loss(name)(logits, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
        assert torch.isfinite(out)


def test_label_counts():
    n_pos, n_neg = label_counts(TARGETS)
    assert n_pos.tolist() == [2.0, 2.0, 1.0] and n_neg.tolist() == [2.0, 2.0, 3.0]


def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown loss 'hinge'.*bce, wbce, focal, cb_focal"):
        make_loss("hinge")
    with pytest.raises(ValueError, match="label_frequencies"):
        make_loss("wbce")
    with pytest.raises(ValueError, match="num_samples"):
        make_loss("cb_focal", label_frequencies=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="no options"):
        make_loss("bce", gamma=2.0)
    with pytest.raises(ValueError, match="shape"):
        make_loss("bce")(LOGITS, TARGETS[:, :2])
    with pytest.raises(ValueError, match="alpha"):
        make_loss("focal", alpha=1.5)
