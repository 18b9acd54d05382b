from __future__ import annotations

import pytest
import torch

from models.subsets import available_rows, full_row, present_mask, rows_by_name, subset_mask, subset_names, unimodal_rows


def test_documented_order_and_names_for_three_modalities():
    mask = subset_mask(3)
    assert subset_names(mask, ["m0", "m1", "m2"]) == ["m0", "m1", "m2", "m0_m1", "m0_m2", "m1_m2", "m0_m1_m2"]


@pytest.mark.parametrize("num_modalities", [1, 2, 3, 4, 5, 6])
def test_mask_enumerates_every_nonempty_subset_once(num_modalities):
    mask = subset_mask(num_modalities)
    assert mask.shape == (2**num_modalities - 1, num_modalities)
    codes = {int(sum(1 << m for m in range(num_modalities) if row[m])) for row in mask}
    assert codes == set(range(1, 2**num_modalities))
    sizes = mask.sum(-1)
    assert torch.all(sizes[1:] >= sizes[:-1])  # by size
    assert torch.equal(unimodal_rows(mask), torch.arange(num_modalities))
    assert int(full_row(mask)) == mask.shape[0] - 1


def test_missing_modalities_map_onto_the_available_subsets():
    names = ["a", "b", "c", "d"]
    mask = subset_mask(4)
    all_names = subset_names(mask, names)
    rows = available_rows(mask, present_mask(names, ["d", "b"]))
    assert [all_names[i] for i in rows] == ["b", "d", "b_d"]
    assert int(full_row(mask[rows])) == 2
    assert torch.equal(rows_by_name(all_names, ["b_d", "a"]), torch.tensor([rows[2], 0]))
    with pytest.raises(ValueError):
        available_rows(mask, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(KeyError):
        present_mask(names, ["e"])
