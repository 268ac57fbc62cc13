"""`BinaryLatentDiffusionPipeline`: a trained binary autoencoder and Bernoulli prior as one
object (diffusers' habit): load a run or a `save_pretrained` folder, sample, inpaint, follow
the denoising trajectory, blend two images in bit space.

Every public method checks its inputs (`bld.inference.checks`) and answers bad ones with a
one-line ValueError; the loops themselves are the functions of `bld.inference.generate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from huggingface_hub import ModelHubMixin

from ..core.config import check_precision
from ..core.loading import LoadedPrior
from ..core.plots import to_pil
from ..models.autoencoder import BinaryAutoencoder
from ..models.sampling import DEFAULT_EVIDENCE_WEIGHT, check_guidance_interval
from .checks import check_images, check_mask, finite, whole_number
from .generate import GenerateResult, class_labels, generate, inpaint

__all__ = ["BinaryLatentDiffusionPipeline", "PipelineOutput", "BlendOutput", "bits_flipped"]


# ------------------------------------------------------------------- the pipeline object
PIPELINE_FORMAT = "bld-pipeline"
PIPELINE_FILES = {"autoencoder": "autoencoder.safetensors", "prior": "prior.safetensors"}


@dataclass
class PipelineOutput:
    """What a pipeline call returns (as diffusers' ``.images``)."""
    images: list  # PIL images, or one (N, c, H, W) tensor in [-1, 1] for output_type="pt"
    labels: torch.Tensor | None  # the class of each image (None: unconditional)
    seconds: float  # wall time of sampling and decoding
    bits: torch.Tensor | None = None  # (N, C, h, w) in {0, 1}, with return_bits=True
    # z_T, then z_t after each of the S steps (S + 1 tensors), with return_trajectory=True
    trajectory: list[torch.Tensor] | None = None
    timesteps: list[int] | None = None


@dataclass
class BlendOutput:
    images: list  # PIL images, one per fraction
    fractions: list[float]
    bits_taken: list[int]  # how many of the differing bits come from the second image
    bits_differing: int  # how many bits the two latents differ in


def bits_flipped(trajectory: list[torch.Tensor]) -> torch.Tensor:
    """(S, N): how many bits of each sample changed at each step of a trajectory."""
    return torch.stack([(b != a).flatten(1).sum(1) for a, b in zip(trajectory, trajectory[1:])])


class BinaryLatentDiffusionPipeline(ModelHubMixin, library_name="bld",
                                    tags=["binary-latent-diffusion", "image-generation"],
                                    paper_url="https://arxiv.org/abs/2304.04820"):
    """A trained binary autoencoder and Bernoulli prior, used as one object.

    >>> pipe = BinaryLatentDiffusionPipeline.from_run("runs/demo")
    >>> out = pipe(class_labels=["Sneaker", "Bag"], n=4, steps=16, guidance=0.5)
    >>> out.images[0].save("sneaker.png")

    Masks follow the diffusers habit: white (True, nonzero) marks the pixels to fill in.
    """

    def __init__(self, autoencoder: BinaryAutoencoder, prior: LoadedPrior,
                 data: dict | None = None, precision: str = "auto") -> None:
        self.autoencoder = autoencoder.eval()
        self.prior = prior
        self.data = dict(data or {})  # the autoencoder's dataset (source, data_dir, ...)
        # auto | fp32 | bf16 (bld.core.device); a call's own ``precision`` overrides it
        self.precision = check_precision(precision)

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_run(cls, run_dir: str | Path | None = None, *, prior: str | Path | None = None,
                 autoencoder: str | Path | None = None, device: torch.device | str = "cpu",
                 use_ema: bool = True, precision: str = "auto") -> "BinaryLatentDiffusionPipeline":
        """Load a trained run: a `bld demo` folder (autoencoder/ and prior/ inside), a prior
        run or checkpoint folder (its autoencoder is the one it was trained on, unless
        ``autoencoder`` is given), or a folder written by `save_pretrained`. ``precision``
        (auto | fp32 | bf16) is the default of every sampling call (bld.core.device)."""
        from ..core.config import ConfigError, to_dict
        from ..core.device import resolve_device
        from ..core.loading import load_autoencoder_with_config, load_prior
        device = resolve_device(str(device))
        if run_dir is not None:
            run_dir = _zoo_path(run_dir)
            if _is_pretrained_folder(run_dir):
                pipe = cls.from_pretrained(run_dir, device=device)
                pipe.precision = check_precision(precision)
                return pipe
            if (run_dir / "prior").is_dir():
                prior = prior or run_dir / "prior"
                if autoencoder is None and (run_dir / "autoencoder").is_dir():
                    autoencoder = run_dir / "autoencoder"
            else:
                prior = prior or run_dir
        if prior is None:
            raise ConfigError("from_run needs a run folder or prior=PATH")
        loaded = load_prior(prior, device, use_ema)
        ae_path = autoencoder or loaded.config.autoencoder
        if not ae_path:
            raise ConfigError(f"the prior in {prior} does not name its autoencoder; "
                              "pass autoencoder=PATH (--autoencoder)")
        ae, ae_cfg = load_autoencoder_with_config(ae_path, device, use_ema)
        return cls(ae, loaded, to_dict(ae_cfg.data), precision)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs
                        ) -> "BinaryLatentDiffusionPipeline":
        """A `save_pretrained` folder, a shipped model's name (`bld models` lists them,
        offline) or a Hugging Face Hub repo id (``device=`` as in `from_run`)."""
        return super().from_pretrained(_zoo_path(pretrained_model_name_or_path), **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_model

        from .. import __version__
        from ..core.config import to_dict
        save_directory = Path(save_directory)
        save_model(self.autoencoder, str(save_directory / PIPELINE_FILES["autoencoder"]))
        save_model(self.prior.model, str(save_directory / PIPELINE_FILES["prior"]))
        config = {"format": PIPELINE_FORMAT, "bld_version": __version__,
                  "autoencoder_config": to_dict(self.autoencoder.config),
                  "prior_config": to_dict(self.prior.config),
                  "classes": list(self.prior.classes), "data": self.data}
        (save_directory / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None,
                         cache_dir: str | Path | None = None, force_download: bool = False,
                         local_files_only: bool = False, token: str | bool | None = None,
                         config: dict | None = None, device: torch.device | str = "cpu",
                         **_ignored) -> "BinaryLatentDiffusionPipeline":
        from safetensors.torch import load_model

        from ..core.config import ConfigError, config_from_dict, from_dict
        from ..core.device import resolve_device
        from ..models.autoencoder import AutoencoderConfig
        from ..models.denoiser import Denoiser
        from ..models.diffusion import BernoulliDiffusion
        if not config or config.get("format") != PIPELINE_FORMAT:
            raise ConfigError(f"{model_id} is not a bld pipeline folder (its config.json must "
                              f"say format {PIPELINE_FORMAT!r}); write one with save_pretrained")
        files = {}
        for part, name in PIPELINE_FILES.items():
            local = Path(model_id) / name
            if not local.is_file() and not Path(model_id).is_dir():
                from huggingface_hub import hf_hub_download
                local = Path(hf_hub_download(model_id, name, revision=revision,
                                             cache_dir=cache_dir, force_download=force_download,
                                             local_files_only=local_files_only, token=token))
            if not local.is_file():
                raise ConfigError(f"{model_id} lacks {name}; the folder is incomplete")
            files[part] = local
        device = resolve_device(str(device))
        ae = BinaryAutoencoder(from_dict(AutoencoderConfig, config["autoencoder_config"]))
        load_model(ae, str(files["autoencoder"]), strict=True, device=str(device))
        pcfg = config_from_dict("prior", config["prior_config"])
        model = Denoiser(pcfg.model)
        load_model(model, str(files["prior"]), strict=True, device=str(device))
        prior = LoadedPrior(model.to(device).eval(), BernoulliDiffusion(pcfg.diffusion).to(device),
                            pcfg, tuple(config.get("classes", ())), Path(model_id))
        return cls(ae.to(device), prior, config.get("data"))

    # ---------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.prior.model.parameters()).device

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names (empty for an unconditional prior or unnamed classes)."""
        return self.prior.classes

    @property
    def num_classes(self) -> int:
        return self.prior.config.model.num_classes

    @property
    def image_size(self) -> int:
        return self.autoencoder.config.image_size

    @property
    def channels(self) -> int:
        return self.autoencoder.config.in_channels

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.autoencoder.config.latent_shape)

    @property
    def timesteps(self) -> int:
        """T, the number of trained diffusion steps (sampling may use 2..T of them)."""
        return self.prior.diffusion.T

    @property
    def is_student(self) -> bool:
        """True for a distilled student (`bld distill`, docs/distill.md)."""
        return bool(self.prior.config.student.design)

    @property
    def default_steps(self) -> int:
        """Sampling steps when a call names none: the prior config's ``sample_steps`` (16
        unless set; a shipped model's default chosen by measurement, a student's own K)."""
        return self.prior.config.sample_steps

    @property
    def default_guidance(self) -> float:
        """The guidance the prior's training snapshots used (0 when unconditional)."""
        return self.prior.config.sample_guidance if self.num_classes else 0.0

    @property
    def default_guidance_interval(self) -> tuple[float, float]:
        """The (lo, hi) fractions of T where guidance applies, from the prior's config."""
        return tuple(self.prior.config.sample_guidance_interval)

    @property
    def default_temperature(self) -> float:
        """The sampler's temperature from the prior's config (``sample_temperature``)."""
        return float(self.prior.config.sample_temperature)

    # ----------------------------------------------------------------------- sampling
    def _labels(self, wanted, n: int | None) -> tuple[torch.Tensor | None, int]:
        if wanted is not None and not isinstance(wanted, (list, tuple, torch.Tensor)):
            wanted = [wanted]
        if isinstance(wanted, torch.Tensor):
            wanted = wanted.tolist()
        wanted = [c if isinstance(c, str) else whole_number(c, "a class id") for c in wanted] \
            if wanted is not None else None
        n = whole_number(n if n is not None else (len(wanted) if wanted else 1), "n")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        return class_labels(self.prior, wanted, n), n

    def _generator(self, generator: torch.Generator | int | None, seed: int) -> torch.Generator:
        if isinstance(generator, torch.Generator):
            return generator
        return torch.Generator(self.device).manual_seed(seed if generator is None else generator)

    def _guidance_interval(self, interval) -> tuple[float, float]:
        """``interval`` checked (one-line ValueError), or the prior's when None."""
        return self.default_guidance_interval if interval is None else \
            check_guidance_interval(interval)

    def _check_sampling(self, steps, guidance, temperature) -> tuple[int, float]:
        """One-line ValueErrors for bad sampling settings; returns steps as an int and the
        temperature (the prior's when None)."""
        if temperature is None:
            temperature = self.default_temperature
        steps = whole_number(self.default_steps if steps is None else steps, "steps")
        if self.is_student:
            from ..models.sampling import STUDENT_STEPS
            if steps not in STUDENT_STEPS:
                raise ValueError(f"a distilled student samples in 1 or 2 steps, got {steps}")
        elif not 2 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in 2..{self.timesteps} (the prior's T), got {steps}")
        if guidance is not None and finite(guidance, "guidance") < 0:
            raise ValueError(f"guidance must be >= 0 (0: no guidance), got {guidance}")
        if finite(temperature, "temperature") <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return steps, temperature

    def __call__(self, class_labels=None, n: int | None = None, *, steps: int | None = None,
                 guidance: float | None = None, temperature: float | None = None,
                 evidence_weight: float = DEFAULT_EVIDENCE_WEIGHT,
                 guidance_interval: tuple[float, float] | None = None,
                 generator: torch.Generator | int | None = None, seed: int = 0,
                 return_bits: bool = False, return_trajectory: bool = False,
                 output_type: str = "pil", batch_size: int = 256, precision: str | None = None,
                 callback: Callable[[int, int], None] | None = None,
                 progress: bool = False) -> PipelineOutput:
        """Sample n images in ``steps`` steps (None: `default_steps`, the prior config's).

        class_labels: an id, a name or a list of them (cycled over the n images); None
            samples unconditionally. n defaults to the number of labels (or 1).
        guidance: classifier-free guidance w; None takes the prior's `default_guidance`
            when labels are given (0 otherwise).
        guidance_interval: (lo, hi): guide only the steps with lo <= t / T <= hi; None takes
            the prior's `default_guidance_interval`.
        temperature: the sampler's tau; None takes the prior's `default_temperature`.
        generator: a torch.Generator or an int seed (else ``seed``) - same seed, same images.
        output_type: "pil" (a list of PIL images) or "pt" (a tensor in [-1, 1]).
        """
        labels, n = self._labels(class_labels, n)
        guidance_interval = self._guidance_interval(guidance_interval)
        steps, temperature = self._check_sampling(steps, guidance, temperature)
        if guidance is None:
            guidance = self.default_guidance if labels is not None else 0.0
        res = generate(self.prior, self.autoencoder, n, steps=steps, temperature=temperature,
                       guidance=guidance, evidence_weight=evidence_weight, labels=labels,
                       guidance_interval=guidance_interval,
                       generator=self._generator(generator, seed), batch_size=batch_size,
                       precision=precision or self.precision, callback=callback, progress=progress,
                       return_trajectory=return_trajectory)
        return self._output(res, output_type, return_bits)

    def _output(self, res: GenerateResult, output_type: str, return_bits: bool) -> PipelineOutput:
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        images = res.images if output_type == "pt" else [to_pil(x) for x in res.images]
        return PipelineOutput(images, res.labels, res.seconds,
                              res.bits if return_bits else None, res.trajectory, res.timesteps)

    def inpaint(self, image, mask, n: int = 4, *, class_labels=None, steps: int = 16,
                guidance: float | None = None, temperature: float | None = None,
                evidence_weight: float = DEFAULT_EVIDENCE_WEIGHT,
                guidance_interval: tuple[float, float] | None = None,
                generator: torch.Generator | int | None = None, seed: int = 0,
                paste: bool = False, return_bits: bool = False, output_type: str = "pil",
                precision: str | None = None,
                callback: Callable[[int, int], None] | None = None) -> PipelineOutput:
        """n completions of ``image`` where ``mask`` is white (True, nonzero): those pixels
        are regenerated, the rest is known. Latent positions whose pixel patch is wholly
        known keep the image's bits. ``paste`` puts the known pixels back over the decoder's
        output (off by default, so the result shows what the prior made)."""
        if self.is_student:
            raise ValueError("a distilled student cannot inpaint (it maps noise to a sample in "
                             "one go); inpaint with its teacher "
                             f"{self.prior.config.student.teacher or ''}".rstrip())
        check_images(image, one=True)
        check_mask(mask, image)
        x = self.to_tensor(image)[0]
        fill = self.mask_to_tensor(mask)
        if not bool(fill.any()):
            raise ValueError("the mask leaves no pixel to fill in")
        labels, n = self._labels(class_labels, n)
        guidance_interval = self._guidance_interval(guidance_interval)
        steps, temperature = self._check_sampling(steps, guidance, temperature)
        if guidance is None:
            guidance = self.default_guidance if labels is not None else 0.0
        res = inpaint(self.prior, self.autoencoder, x, (~fill).float(), n=n, paste=paste,
                      steps=steps, temperature=temperature, guidance=guidance,
                      guidance_interval=guidance_interval,
                      evidence_weight=evidence_weight, labels=labels,
                      generator=self._generator(generator, seed),
                      precision=precision or self.precision, callback=callback)
        return self._output(res, output_type, return_bits)

    # ------------------------------------------------------------------- bits <-> images
    def to_tensor(self, images) -> torch.Tensor:
        """PIL image(s), a uint8 array (H, W[, 3]) or a tensor (c, H, W) / (N, c, H, W) in
        [-1, 1] -> (N, c, S, S) in [-1, 1] at the model's size and mode (resized and
        centre-cropped as training data is)."""
        import numpy as np
        from PIL import Image

        from ..data import image_to_tensor
        if isinstance(images, np.ndarray) and images.dtype == np.uint8:
            images = Image.fromarray(images)  # (H, W) or (H, W, 3|4) pixels
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, (list, tuple)):
            return torch.stack([image_to_tensor(im, self.image_size, self.channels)
                                if isinstance(im, Image.Image) else self.to_tensor(im)[0]
                                for im in images])
        x = torch.as_tensor(images).float()
        x = x[None] if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"image tensors must be (N, {self.channels}, {self.image_size}, "
                             f"{self.image_size}) in [-1, 1], got {tuple(x.shape)}")
        return x

    def mask_to_tensor(self, mask) -> torch.Tensor:
        """A mask (PIL image, array or tensor; white / True / nonzero = fill in) -> bool
        (S, S) at the model's size (nearest resize)."""
        import numpy as np
        from PIL import Image
        if isinstance(mask, Image.Image):
            if mask.mode in ("RGBA", "LA"):
                mask = mask.getchannel("A")
            mask = mask.convert("L").resize((self.image_size, self.image_size), Image.NEAREST)
            return torch.from_numpy(np.array(mask) > 127)
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if m.dim() != 2:
            raise ValueError(f"a mask must be 2-D (H, W), got shape {tuple(m.shape)}")
        if tuple(m.shape) != (self.image_size, self.image_size):
            return self.mask_to_tensor(Image.fromarray((m > 0).numpy().astype(np.uint8) * 255))
        return m > 0

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images -> their deterministic bits (N, C, h, w) in {0, 1}."""
        check_images(images)
        x = self.to_tensor(images).to(self.device)
        return self.autoencoder.encode(x, deterministic=True).cpu()

    @torch.no_grad()
    def decode(self, bits: torch.Tensor, output_type: str = "pil"):
        """Bits (N, C, h, w) (or one (C, h, w)) -> PIL images, or a tensor in [-1, 1]."""
        bits = torch.as_tensor(bits).float()
        bits = bits[None] if bits.dim() == 3 else bits
        if tuple(bits.shape[1:]) != self.latent_shape:
            raise ValueError(f"bits must be (N, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(bits.shape)}")
        x = self.autoencoder.decode(bits.to(self.device)).float().clamp(-1, 1).cpu()
        if output_type == "pt":
            return x
        return [to_pil(im) for im in x]

    @torch.no_grad()
    def blend(self, image_a, image_b, fractions=(0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0
              ) -> BlendOutput:
        """Walk from image a to image b in bit space: of the bits in which their latents
        differ, take a growing share (in one random order) from b, and decode."""
        for image in (image_a, image_b):
            check_images(image, one=True)
        za, zb = self.encode([image_a, image_b])
        differ = (za != zb).flatten().nonzero().squeeze(1)
        order = differ[torch.randperm(len(differ), generator=torch.Generator().manual_seed(seed))]
        zs, taken = [], []
        for f in fractions:
            if not 0.0 <= f <= 1.0:
                raise ValueError(f"blend fractions must be in [0, 1], got {f}")
            k = round(f * len(order))
            z = za.flatten().clone()
            z[order[:k]] = zb.flatten()[order[:k]]
            zs.append(z.view_as(za))
            taken.append(k)
        return BlendOutput(self.decode(torch.stack(zs)), list(fractions), taken, len(differ))


def _zoo_path(name_or_path: str | Path) -> Path:
    """A shipped model's folder for its name; any other value as the path it is."""
    from .zoo import lookup
    return lookup(name_or_path)


def _is_pretrained_folder(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("format") == PIPELINE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False
