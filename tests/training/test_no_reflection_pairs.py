"""Pairs without a reflection: scenes the network should leave as they are."""
from __future__ import annotations

import torch
from test_real_pairs import PHOTOS

from dmdnet.training.synthesis import NO_REFLECTION, PairSampler, SynthesisSettings, list_images


def test_a_pair_without_a_reflection_is_its_photo_three_times_over_with_nothing_reflected():
    sampler = PairSampler(list_images([PHOTOS])[:4], 32, 0)
    blended, transmission, reflection = sampler.sample(3, NO_REFLECTION)
    assert blended.shape == (3, 3, 32, 32)
    assert torch.equal(blended, transmission) and not torch.equal(blended[0], blended[1])
    assert reflection.abs().max() == 0


def test_the_sampler_draws_them_at_their_share_and_leaves_the_rest_as_it_was():
    files = list_images([PHOTOS])[:6]
    blended, transmission, reflection = PairSampler(
        files, 32, 1, SynthesisSettings(no_reflection_share=0.3)).sample(200)
    clean = reflection.flatten(1).abs().amax(1) == 0
    assert 0.2 < float(clean.float().mean()) < 0.4
    assert torch.equal(blended[clean], transmission[clean])
    assert (blended[~clean] != transmission[~clean]).flatten(1).any(1).all()

    # a share of 0 draws no random number for it, so runs from before the option keep their
    # trajectory on resume; any share above 0 draws one per pair (and so moves every later crop)
    without = PairSampler(files, 32, 5, SynthesisSettings()).sample(6)
    never_drawn = PairSampler(files, 32, 5, SynthesisSettings(no_reflection_share=1e-12)).sample(6)
    assert not torch.equal(without[0], never_drawn[0])
    assert (never_drawn[2].flatten(1).abs().amax(1) > 0).all()


def test_reflection_free_validation_scores_what_the_network_takes_from_a_plain_photo():
    from dmdnet.training.validation import PSNR_CAP, validate_reflection_free

    photos = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    def untouched(image, features):
        return image, torch.zeros_like(image)
    def dims_and_blurs(image, features):
        return 0.5 * torch.nn.functional.avg_pool2d(image, 3, 1, 1), image

    left_alone = validate_reflection_free(untouched, lambda image: None, photos, "cpu")
    assert left_alone == {"psnr_t": 100.0, "psnr_inv_t": PSNR_CAP}
    changed = validate_reflection_free(dims_and_blurs, lambda image: None, photos, "cpu")
    assert changed["psnr_t"] < changed["psnr_inv_t"] < 30  # the dimming costs only plain PSNR
