"""The U-Net noise predictor: shapes, input checks, time conditioning, gradient flow."""

import pytest
import torch

from unet import Unet


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dim_mults", [(1, 2), (1, 2, 4, 8)])
def test_unet_output_has_the_input_shape(channels, dim_mults):
    model = Unet(8, dim_mults=dim_mults, channels=channels)
    x = torch.randn(3, channels, 16, 16)
    t = torch.tensor([0, 4, 9])
    out = model(x, t)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_unet_accepts_non_square_images_of_divisible_size():
    model = Unet(8, dim_mults=(1, 2, 4), channels=1)
    x = torch.randn(2, 1, 8, 16)
    assert model(x, torch.tensor([1, 2])).shape == x.shape


@pytest.mark.parametrize("height, width", [(12, 16), (16, 20), (6, 6)])
def test_unet_rejects_sizes_not_divisible_by_its_downsampling(height, width):
    model = Unet(8, dim_mults=(1, 2, 4, 8), channels=1)  # halves 3 times: needs multiples of 8
    with pytest.raises(ValueError, match=rf"divisible by 8; got H={height}, W={width}"):
        model(torch.randn(1, 1, height, width), torch.tensor([0]))


def test_unet_rejects_the_wrong_number_of_channels():
    model = Unet(8, dim_mults=(1, 2), channels=3)
    with pytest.raises(ValueError, match=r"built for 3 channel\(s\) but x has 1"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))


def test_unet_rejects_time_indices_of_the_wrong_shape():
    model = Unet(8, dim_mults=(1, 2), channels=1)
    with pytest.raises(ValueError, match=r"t of shape \(2,\)"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0, 1, 2]))


def test_unet_output_depends_on_the_time_index():
    model = Unet(8, dim_mults=(1, 2), channels=1).eval()
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = model(x, torch.tensor([0, 9]))
    # Same image, different t: the time embedding must change the prediction.
    assert not torch.allclose(out[0], out[1])


def test_unet_treats_batch_elements_independently():
    model = Unet(8, dim_mults=(1, 2), channels=1).eval()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 1, 4, 1])
    together = model(x, t)
    alone = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    # GroupNorm normalizes per example, so batching must not mix examples (float32 reassociation only).
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_every_unet_parameter_receives_a_gradient():
    model = Unet(8, dim_mults=(1, 2), channels=1)
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([0, 5]))
    out.square().mean().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not unused, f"parameters outside the computation graph: {unused}"


@pytest.mark.gpu
def test_unet_runs_in_bf16_autocast_with_channels_last_on_cuda():
    model = Unet(16, dim_mults=(1, 2, 4, 8), channels=3).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x, torch.randint(0, 50, (4,), device="cuda"))
    assert out.shape == x.shape and torch.isfinite(out).all()
