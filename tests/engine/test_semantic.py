"""Semantic attribution ([Khakzar2021] eq. 6): a hand-computed case, parity with captum's
LayerIntegratedGradients, the planted unit ranked first, and the §3.5 unit maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from captum.attr import LayerIntegratedGradients

from cxrexplain.bundle import ClassifierBundle
from cxrexplain.errors import DissectionRequired, InvalidOption, UnsupportedModel
from cxrexplain.explainer import Explainer
from cxrexplain.semantic import DissectionTable, UnitAttribution, semantic_attribution
from cxrexplain.spec import unit_spec


class SquareHead(nn.Module):
    """f(a) = sum_k c_k (sum_i a_k^i)^2 over the output of ``units`` (the identity on x)."""

    def __init__(self, c: list[float]):
        super().__init__()
        self.units = nn.Identity()
        self.c = torch.tensor(c, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.units(x).sum(dim=(2, 3))
        return (self.c * s**2).sum(dim=1, keepdim=True)


def test_hand_computed_square_head() -> None:
    # Along alpha, df/da_k^i = 2 c_k alpha S_k, whose integral over [0, 1] is c_k S_k (Gauss-Legendre is exact
    # on polynomials of low degree): s_k^i = a_k^i c_k S_k, and the scores are |c_k| S_k |S_k| for a >= 0.
    model = SquareHead([1.0, -2.0])
    a = torch.tensor([[[[1.0, 2.0]], [[0.5, 0.0]]]], dtype=torch.float64)  # S = (3, 0.5)
    out = semantic_attribution(model, a, torch.tensor([0]), "units", steps=2)
    expected = torch.tensor([[[[3.0, 6.0]], [[-0.5, 0.0]]]], dtype=torch.float64)
    torch.testing.assert_close(out.attributions, expected)
    torch.testing.assert_close(out.scores, torch.tensor([[9.0, 0.5]], dtype=torch.float64))
    # completeness: the attributions total f(a) - f(0)
    assert out.attributions.sum().item() == pytest.approx(model(a).item())


class Planted(nn.Module):
    """conv (no bias, so the zero input gives the zero activation captum's layer baseline needs) -> in-place
    ReLU -> 1x1 mix -> GAP -> linear. Unit ``PLANTED`` of ``features`` alone feeds target 1 strongly."""

    PLANTED, TARGET = 2, 1

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=inplace)
        self.mix = nn.Conv2d(4, 3, 1)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.features.weight[self.PLANTED] = self.features.weight[self.PLANTED].abs() + 0.2
            self.mix.weight[:, self.PLANTED] = 0.0
            self.mix.weight[0, self.PLANTED] = 4.0
            self.head.weight[self.TARGET, 0] = 4.0
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mix(self.relu(self.features(x)))).mean(dim=(2, 3)))


def test_equals_captum_layer_integrated_gradients() -> None:
    # captum's hook hands the in-place ReLU its leaf and fails; ours passes a copy, so compare on the out-of-place
    # twin and check the in-place model gives the same
    model = Planted(inplace=False).eval()
    torch.manual_seed(1)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    targets = torch.tensor([1, 0, 1])
    ours = semantic_attribution(model, x, targets, "features", steps=16, internal_batch_size=5)
    reference = LayerIntegratedGradients(model, model.features).attribute(
        x, baselines=torch.zeros_like(x), target=targets, n_steps=16, method="gausslegendre"
    )
    torch.testing.assert_close(ours.attributions, reference, rtol=1e-9, atol=1e-12)
    in_place = semantic_attribution(Planted(inplace=True).eval(), x, targets, "features", steps=16)
    torch.testing.assert_close(in_place.attributions, ours.attributions, rtol=1e-12, atol=1e-14)


def test_planted_unit_first() -> None:
    model = Planted().eval()
    torch.manual_seed(2)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    out = semantic_attribution(model, x, torch.tensor([Planted.TARGET] * 2), "features", steps=8)
    assert out.top_units(2)[:, 0].tolist() == [Planted.PLANTED, Planted.PLANTED]
    # the hook is gone: a plain forward is the model's own again
    assert not model.features._forward_hooks


def test_unit_maps_divided_by_max_and_upsampled() -> None:
    s = torch.tensor([[[[2.0, 1.0], [0.0, -1.0]], [[-4.0, -2.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    result = UnitAttribution(layer="l", attributions=s, scores=s.abs().sum(dim=(2, 3)))
    assert result.top_units(3).tolist() == [[1, 0, 2]]
    maps = result.unit_maps(torch.tensor([[0, 1, 2]]), size=(2, 2))
    torch.testing.assert_close(maps[0, 0], torch.tensor([[1.0, 0.5], [0.0, -0.5]]))
    # only negative contributions: divided by the largest magnitude, the sign kept
    torch.testing.assert_close(maps[0, 1], torch.tensor([[-1.0, -0.5], [0.0, 0.0]]))
    torch.testing.assert_close(maps[0, 2], torch.zeros(2, 2))
    # a 2x2 map upsampled to 4x4 (bilinear, half-pixel centres): the corners keep the values
    big = result.unit_maps(torch.tensor([[0]]), size=(4, 4))[0, 0]
    assert big[0, 0].item() == pytest.approx(1.0) and big[-1, -1].item() == pytest.approx(-0.5)
    assert big[0, 1].item() == pytest.approx(0.875)  # 0.75 * 1.0 + 0.25 * 0.5


def test_errors_name_the_fix() -> None:
    model = Planted().eval()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(InvalidOption, match="named_modules"):
        semantic_attribution(model, x, torch.tensor([0]), "layer9")
    with pytest.raises(UnsupportedModel, match="feature map"):
        semantic_attribution(model, x, torch.tensor([0]), "head")


# --- the served `semantic` method: semantic attribution over a dissected layer, with the table's concepts ---
TABLE = DissectionTable(layer="features", concepts=("lung", "rib", "heart", "lung"), ious=(0.01, 0.02, 0.3, 0.0),
                        detectors=(False, False, True, False), data="hand-made")


def planted_bundle(table: DissectionTable | None) -> ClassifierBundle:
    extra = {} if table is None else {"dissection": table}
    return ClassifierBundle(module=Planted().float(), labels=["a", "b"], input_spec=unit_spec(1, 8), extra=extra)


def test_semantic_method_names_the_planted_unit_and_its_concept() -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 1, 8, 8)
    result = Explainer(planted_bundle(TABLE), device="cpu").explain(
        x, ["semantic"], targets="b", options={"semantic": {"top": 2, "steps": 8}})
    units = result.semantic
    assert units is not None and units.layer == "features"
    assert units.units[:, 0].tolist() == [Planted.PLANTED] * 2
    assert [row[0] for row in units.concepts] == ["heart", "heart"]
    assert units.ious[:, 0].tolist() == pytest.approx([0.3, 0.3]) and units.detectors[:, 0].all()
    assert units.maps.shape == (2, 2, 8, 8) and result.heatmaps["semantic"].shape == (2, 8, 8)
    # the planted unit's map is its own s_k divided by its maximum (§3.5), upsampled to the input size
    direct = semantic_attribution(Planted().float().eval(), x, torch.tensor([1, 1]), "features", steps=8)
    torch.testing.assert_close(units.maps[:, :1], direct.unit_maps(direct.top_units(1), (8, 8)))
    assert units.scores[:, 0].tolist() == pytest.approx(direct.scores[:, Planted.PLANTED].tolist())
    assert (units.scores[:, 0] >= units.scores[:, 1]).all()


def test_semantic_method_needs_a_matching_table() -> None:
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(DissectionRequired, match="semantic"):
        Explainer(planted_bundle(None), device="cpu").explain(x, ["semantic"])
    short = DissectionTable(layer="features", concepts=("lung",), ious=(0.1,), detectors=(True,))
    with pytest.raises(UnsupportedModel, match="re-export"):
        Explainer(planted_bundle(short), device="cpu").explain(x, ["semantic"])
    assert DissectionTable.from_dict(TABLE.to_dict()) == TABLE
    with pytest.raises(ValueError, match="re-export"):
        DissectionTable.from_dict({"layer": "features", "units": [{"unit": 1, "concept": "x", "iou": 0.1,
                                                                   "detector": True}]})
