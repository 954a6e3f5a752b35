"""Wan2.1 causal 3-D VAE: a thin wrapper over diffusers' `AutoencoderKLWan` with the original's latent scaling.

The original (`wan/models/wan_vae.py`) normalises latents inside encode/decode with 16 hard-coded
per-channel statistics: encode returns `(mu - mean) * (1 / std)` (its `mode()` is that normalised mean),
decode starts from `z / (1 / std) + mean` and clamps the video to [-1, 1]. The network itself is
diffusers' `AutoencoderKLWan`, which computes the same function (encode in causal chunks of 1, 4, 4, ...
frames, decode one latent frame at a time, both through the causal-conv feature cache).

`decode_stream` drives the decoder's frame loop itself and keeps the feature cache between chunks, so a
video of any length decodes with memory independent of its length; the concatenated chunks equal one
whole `decode`. Tiling (spatial tiles, blended seams: approximate) and slicing (one batch element at a
time: exact) are opt-in memory modes for small GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from wan.configs import VAEConfig


def build_autoencoder(config: VAEConfig):
    """A diffusers `AutoencoderKLWan` of the Wan2.1 topology at `config.base_dim` (random weights)."""
    from diffusers import AutoencoderKLWan

    if (config.temporal_compression, config.spatial_compression) != (4, 8):
        # the topology (and diffusers' key converter) is fixed: dim_mult [1, 2, 4, 4], two temporal downsamples
        raise ValueError(
            f"the Wan2.1 VAE compresses time by 4 and space by 8, got temporal_compression="
            f"{config.temporal_compression}, spatial_compression={config.spatial_compression}"
        )
    return AutoencoderKLWan(
        base_dim=config.base_dim,
        z_dim=config.z_dim,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        attn_scales=[],
        temperal_downsample=[False, True, True],
        latents_mean=list(config.latents_mean),
        latents_std=list(config.latents_std),
        scale_factor_temporal=config.temporal_compression,
        scale_factor_spatial=config.spatial_compression,
    )


class WanVAE(nn.Module):
    """Video [B, 3, T, H, W] in [-1, 1] (T = 1 + 4k) <-> normalised latents [B, 16, (T-1)//4 + 1, H/8, W/8].

    `self.vae` is the diffusers module (state-dict keys `vae.*`); the latent statistics are
    non-persistent float32 buffers, cast to the data's dtype where used, as in the original.
    """

    def __init__(self, config: VAEConfig = VAEConfig(), vae: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.vae = vae if vae is not None else build_autoencoder(config)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32)
        inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32)  # the original's scale[1]
        self.register_buffer("latents_mean", mean.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_inv_std", inv_std.view(1, -1, 1, 1, 1), persistent=False)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_checkpoints(cls, wan_dir: str | os.PathLike, config: VAEConfig | None = None,
                         dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> "WanVAE":
        """Load `<wan_dir>/Wan2.1_VAE.pth` (original format; `wan_dir` may also be the file) strictly.

        The original runs the VAE in float32 at inference; `dtype` exists for training-style bf16 use.
        """
        from wan.checkpoints.vae import find_vae_file, load_vae_weights

        config = config or VAEConfig()
        path = find_vae_file(wan_dir)
        with torch.device("meta"):  # no full-size random init: the file's tensors are assigned
            inner = build_autoencoder(config)
        load_vae_weights(inner, path, dtype)
        return cls(config, inner).to(device).eval()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    # ----------------------------------------------------------------------------------- memory modes
    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      tile_sample_stride_height: int | None = None, tile_sample_stride_width: int | None = None) -> None:
        """Spatial tiles with blended overlaps (diffusers' defaults: 256 px tiles, stride 192) for encode and
        decode of frames larger than one tile. Saves memory; NOT numerically the original (seams are blended)."""
        self.vae.enable_tiling(tile_sample_min_height, tile_sample_min_width,
                               tile_sample_stride_height, tile_sample_stride_width)

    def disable_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_slicing(self) -> None:
        """Encode/decode one batch element at a time (exact: every op of the VAE is per sample)."""
        self.vae.enable_slicing()

    def disable_slicing(self) -> None:
        self.vae.disable_slicing()

    # ----------------------------------------------------------------------------------------- encode
    def encode_posterior(self, video: Tensor):
        """video [B, 3, T, H, W] in [-1, 1], T = 1 + 4k, H and W multiples of 8 ->
        diffusers `DiagonalGaussianDistribution` over the normalised latents; `.parameters` is
        cat([mu_normalised, log_var]) [B, 32, F, h, w], `.mode()` the inference latent, `.sample()` training's."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, T, H, W], got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        if (t - 1) % self.config.temporal_compression:
            raise ValueError(f"video has {t} frames; the causal VAE needs 1 + 4k frames (e.g. 1, 5, ..., 81)")
        if h % self.config.spatial_compression or w % self.config.spatial_compression:
            raise ValueError(f"video size {h}x{w} must be a multiple of {self.config.spatial_compression}")
        params = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.parameters
        mu, log_var = params.chunk(2, dim=1)
        mu = (mu - self.latents_mean.to(mu.dtype)) * self.latents_inv_std.to(mu.dtype)
        return DiagonalGaussianDistribution(torch.cat([mu, log_var], dim=1))

    def encode(self, video: Tensor) -> Tensor:
        """video [B, 3, T, H, W] in [-1, 1] -> normalised latent mode [B, 16, (T-1)//4 + 1, H/8, W/8]."""
        return self.encode_posterior(video).mode()

    # ----------------------------------------------------------------------------------------- decode
    def _denormalise(self, latents: Tensor) -> Tensor:
        z = latents.to(self.device, self.dtype)
        return z / self.latents_inv_std.to(z.dtype) + self.latents_mean.to(z.dtype)

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.config.z_dim:
            raise ValueError(f"latents must be [B, {self.config.z_dim}, F, h, w], got shape {tuple(latents.shape)}")

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, 16, F, h, w] -> video [B, 3, 1 + 4(F-1), 8h, 8w] clamped to [-1, 1], in one call."""
        self._check_latents(latents)
        return self.vae.decode(self._denormalise(latents)).sample

    def decode_stream(self, latents: Tensor, chunk: int = 1) -> Iterator[Tensor]:
        """Yield the decoded video in order, `chunk` latent frames at a time: the first chunk gives
        1 + 4(chunk-1) frames, every later one 4*chunk (the last possibly fewer): [B, 3, t, 8h, 8w] in [-1, 1].

        The decoder's causal feature cache (the last two time steps of every causal conv input) is carried
        from chunk to chunk, so the concatenation equals `decode(latents)` while memory stays independent of
        F. `latents` may live on another device (e.g. CPU); each chunk is moved to the VAE when it is used.
        Honours slicing (one cache per batch element) and tiling (one cache per spatial tile; the seams are
        blended per frame exactly as in diffusers' tiled decode).
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 latent frame, got {chunk}")
        self._check_latents(latents)
        vae = self.vae
        if getattr(vae.config, "patch_size", None) is not None:
            raise ValueError("decode_stream supports the Wan2.1 VAE (no patchify)")
        batch, _, n_frames, height, width = latents.shape
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        n_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        batches = [slice(b, b + 1) for b in range(batch)] if vae.use_slicing and batch > 1 else [slice(None)]
        grid = self._tile_grid(height, width)
        tiled = grid[0][0] != (slice(None), slice(None))
        # one feature cache per (batch slice, tile): each is a list the decoder fills in place
        caches = {(b, i, j): [None] * n_convs
                  for b in range(len(batches)) for i, row in enumerate(grid) for j in range(len(row))}

        for start in range(0, n_frames, chunk):
            z = self._denormalise(latents[:, :, start:start + chunk])
            parts = []
            for b, bs in enumerate(batches):
                tiles = [[self._decode_frames(z[bs, :, :, ys, xs], caches[b, i, j], first=start == 0,
                                              per_frame_conv=tiled)
                          for j, (ys, xs) in enumerate(row)] for i, row in enumerate(grid)]
                parts.append(self._blend_tiles(tiles, height, width) if tiled else tiles[0][0])
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
            yield out.clamp_(-1.0, 1.0)

    def _decode_frames(self, z: Tensor, cache: list, first: bool, per_frame_conv: bool) -> Tensor:
        """De-normalised latents [b, 16, f, h, w] -> frames, one latent frame per decoder call (as the original)."""
        # post_quant_conv is a 1x1x1 conv (per frame); it is applied to the whole chunk like diffusers' decode
        # applies it to the whole latent, or frame by frame like its tiled decode, so that both give the same
        # floats (a 1x1x1 conv may round differently with the number of positions it is vectorised over)
        x = None if per_frame_conv else self.vae.post_quant_conv(z)
        out = []
        for k in range(z.shape[2]):
            xk = self.vae.post_quant_conv(z[:, :, k:k + 1]) if per_frame_conv else x[:, :, k:k + 1]
            out.append(self.vae.decoder(xk, feat_cache=cache, feat_idx=[0], first_chunk=first and k == 0))
        return torch.cat(out, dim=2)

    # ------------------------------------------------------------------------- tiling (diffusers' layout)
    def _tile_grid(self, height: int, width: int) -> list[list[tuple[slice, slice]]]:
        """Latent-space tile slices, rows of columns; a single full tile when tiling is off or not needed."""
        vae = self.vae
        r = vae.spatial_compression_ratio
        min_h, min_w = vae.tile_sample_min_height // r, vae.tile_sample_min_width // r
        if not (vae.use_tiling and (width > min_w or height > min_h)):
            return [[(slice(None), slice(None))]]
        step_h, step_w = vae.tile_sample_stride_height // r, vae.tile_sample_stride_width // r
        return [[(slice(i, i + min_h), slice(j, j + min_w)) for j in range(0, width, step_w)]
                for i in range(0, height, step_h)]

    def _blend_tiles(self, tiles: list[list[Tensor]], height: int, width: int) -> Tensor:
        """Blend decoded tiles into frames the way diffusers' tiled decode does: each tile is blended in place
        with the (already blended) tile above and to its left, then cropped to the stride."""
        vae = self.vae
        r = vae.spatial_compression_ratio
        stride_h, stride_w = vae.tile_sample_stride_height, vae.tile_sample_stride_width
        blend_h = vae.tile_sample_min_height - stride_h
        blend_w = vae.tile_sample_min_width - stride_w
        rows = []
        for i, row in enumerate(tiles):
            cropped = []
            for j, tile in enumerate(row):
                if i > 0:
                    tile = vae.blend_v(tiles[i - 1][j], tile, blend_h)
                if j > 0:
                    tile = vae.blend_h(row[j - 1], tile, blend_w)
                cropped.append(tile[:, :, :, :stride_h, :stride_w])
            rows.append(torch.cat(cropped, dim=-1))
        return torch.cat(rows, dim=3)[:, :, :, :height * r, :width * r]
