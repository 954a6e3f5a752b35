"""Wan2.1 causal 3-D VAE: a thin wrapper over diffusers' `AutoencoderKLWan` with the original's latent scaling.

The original (`wan/models/wan_vae.py`) normalises latents inside encode/decode with 16 hard-coded
per-channel statistics: encode returns `(mu - mean) * (1 / std)` (its `mode()` is that normalised mean),
decode starts from `z / (1 / std) + mean` and clamps the video to [-1, 1]. The network itself is
diffusers' `AutoencoderKLWan`, which computes the same function (encode in causal chunks of 1, 4, 4, ...
frames, decode one latent frame at a time, both through the causal-conv feature cache).

`decode_stream` drives the decoder's frame loop itself and keeps the feature cache between chunks, so a
video of any length decodes with memory independent of its length; the concatenated chunks equal one
whole `decode`. Three opt-in ways to a lower peak on small GPUs: slicing (one batch element at a time: exact),
halo tiling (`enable_halo_tiling`: spatial tiles computed with a margin that covers the receptive field of
everything that runs per tile, the frame-wide attention of the middle block run on whole frames: exact) and
diffusers' tiling (`enable_tiling`: blended seams, approximate).
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
        self.halo_tile: int | None = None  # see enable_halo_tiling
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
        if self.halo_tile is not None:
            raise ValueError("diffusers' tiling and halo tiling exclude each other; disable_halo_tiling() first")
        self.vae.enable_tiling(tile_sample_min_height, tile_sample_min_width,
                               tile_sample_stride_height, tile_sample_stride_width)

    def disable_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_halo_tiling(self, tile: int = 256) -> None:
        """Encode and decode (`encode`, `decode`, `decode_stream`) in spatial tiles of at most `tile` output pixels a
        side (a multiple of the spatial compression 8), for frames larger than one tile.

        Exact, unlike `enable_tiling`: every op of the Wan VAE is local (3x3 convs, per-position RMS norms,
        nearest upsampling, causal time convs) except the single-head attention of the middle blocks, which works
        on whole frames at 1/8 resolution. So the decoder runs `conv_in` + its middle block on whole latent frames
        and only the upsampling blocks + head per tile; the encoder runs `conv_in` + its downsampling blocks per
        tile and the middle block + head on whole frames. Each tile is computed over its core plus a margin as wide
        as the receptive field of what runs per tile (computed from the modules: 13 latent pixels into the decoder,
        64 / 68 pixels into the encoder for the Wan2.1 VAE), with its own causal cache, and cropped to its core;
        the decoder narrows the margin after every upsampling block. Costs some extra compute in the margins."""
        if tile < self.config.spatial_compression or tile % self.config.spatial_compression:
            raise ValueError(f"halo tile must be a positive multiple of {self.config.spatial_compression} pixels, "
                             f"got {tile}")
        if self.vae.use_tiling:
            raise ValueError("halo tiling and diffusers' tiling (enable_tiling) exclude each other; disable_tiling() "
                             "first")
        self.halo_tile = tile

    def disable_halo_tiling(self) -> None:
        self.halo_tile = None

    def _halo_grid(self, height: int, width: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]] | None:
        """Latent [h, w] -> the tiles' core row and column ranges (latent pixels, even split), or None when halo
        tiling is off or one tile covers the frame."""
        if self.halo_tile is None:
            return None
        latent_tile = self.halo_tile // self.config.spatial_compression
        rows, cols = -(-height // latent_tile), -(-width // latent_tile)
        if rows == cols == 1:
            return None
        return _even_split(height, rows), _even_split(width, cols)

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
        grid = self._halo_grid(h // self.config.spatial_compression, w // self.config.spatial_compression)
        if grid is None:
            params = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.parameters
        else:  # the video stays where it is (e.g. CPU); each tile of each frame chunk moves to the VAE when used
            batches = video.split(1) if self.vae.use_slicing and video.shape[0] > 1 else [video]
            params = torch.cat([self._encode_halo(v, *grid) for v in batches])
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
        if self._halo_grid(*latents.shape[-2:]) is not None:
            return torch.cat(list(self.decode_stream(latents, chunk=latents.shape[2])), dim=2)
        return self.vae.decode(self._denormalise(latents)).sample

    def decode_stream(self, latents: Tensor, chunk: int = 1) -> Iterator[Tensor]:
        """Yield the decoded video in order, `chunk` latent frames at a time: the first chunk gives
        1 + 4(chunk-1) frames, every later one 4*chunk (the last possibly fewer): [B, 3, t, 8h, 8w] in [-1, 1].

        The decoder's causal feature cache (the last two time steps of every causal conv input) is carried
        from chunk to chunk, so the concatenation equals `decode(latents)` while memory stays independent of
        F. `latents` may live on another device (e.g. CPU); each chunk is moved to the VAE when it is used.
        Honours slicing (one cache per batch element), halo tiling (exact; see `enable_halo_tiling`) and tiling
        (one cache per spatial tile; the seams are blended per frame exactly as in diffusers' tiled decode).
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
        halo = self._halo_grid(height, width)
        grid = [[(slice(None), slice(None))]] if halo is not None else self._tile_grid(height, width)
        tiled = grid[0][0] != (slice(None), slice(None))
        # one feature cache per (batch slice, tile): each is a list the decoder fills in place
        caches = {(b, i, j): [None] * n_convs
                  for b in range(len(batches)) for i, row in enumerate(grid) for j in range(len(row))}
        if halo is not None:  # per batch slice: the whole-frame part's cache and one per halo tile
            rows, cols = halo
            halo_caches = [([None] * n_convs, {(i, j): [None] * n_convs for i in range(len(rows))
                                               for j in range(len(cols))}) for _ in batches]

        for start in range(0, n_frames, chunk):
            z = self._denormalise(latents[:, :, start:start + chunk])
            parts = []
            for b, bs in enumerate(batches):
                if halo is not None:
                    x = self.vae.post_quant_conv(z[bs])  # on the whole chunk, as in `_decode_frames`
                    parts.append(torch.cat([self._decode_frame_halo(x[:, :, k:k + 1], *halo_caches[b], rows, cols,
                                                                    first=start == 0 and k == 0)
                                            for k in range(x.shape[2])], dim=2))
                    continue
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

    # ------------------------------------------------------------------------------------- halo tiling
    def _decode_frame_halo(self, x: Tensor, trunk_cache: list, tile_caches: dict, rows: list, cols: list,
                           first: bool) -> Tensor:
        """One post_quant_conv'd latent frame [b, 16, 1, h, w] -> its frames [b, 3, t, 8h, 8w]: `conv_in` and the
        middle block (frame-wide attention) on the whole frame, the upsampling blocks and the head per tile."""
        dec = self.vae.decoder
        idx = [0]
        x = _cached_conv(dec.conv_in, x, trunk_cache, idx)
        x = dec.mid_block(x, feat_cache=trunk_cache, feat_idx=idx)
        n_trunk = idx[0]
        margins, head_margin = _decoder_margins(dec)
        height, width = x.shape[-2:]
        out_rows = []
        for i, (a, b) in enumerate(rows):
            out_cols = []
            for j, (c, d) in enumerate(cols):
                cache, idx = tile_caches[i, j], [n_trunk]
                t, y0, x0, s = x, 0, 0, 1  # t covers [y0, ...) x [x0, ...) at s times the latent resolution
                for block, m in zip(dec.up_blocks, margins):
                    t, y0, x0 = _crop(t, y0, x0, (a * s - m, b * s + m), (c * s - m, d * s + m), height * s, width * s)
                    t = block(t, feat_cache=cache, feat_idx=idx, first_chunk=first)
                    if block.upsamplers is not None:
                        s, y0, x0 = 2 * s, 2 * y0, 2 * x0
                m = head_margin
                t, y0, x0 = _crop(t, y0, x0, (a * s - m, b * s + m), (c * s - m, d * s + m), height * s, width * s)
                t = _cached_conv(dec.conv_out, dec.nonlinearity(dec.norm_out(t)), cache, idx)
                out_cols.append(_crop(t, y0, x0, (a * s, b * s), (c * s, d * s), height * s, width * s)[0])
            out_rows.append(torch.cat(out_cols, dim=-1))
        return torch.cat(out_rows, dim=-2)

    def _encode_halo(self, video: Tensor, rows: list, cols: list) -> Tensor:
        """video [b, 3, T, H, W] -> the moments before normalisation [b, 32, F, h, w], as diffusers' `_encode`
        (causal chunks of 1, 4, 4, ... frames, one latent frame each): `conv_in` and the downsampling blocks per
        tile, the middle block (frame-wide attention) and the head on whole latent frames."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        vae = self.vae
        enc = vae.encoder
        r = self.config.spatial_compression
        n_frames, height, width = video.shape[2:]
        left, right = _encoder_margins(enc)
        left = -(-left // r) * r  # tile origins on the stride-2 grid of every downsampling step
        n_convs = sum(isinstance(m, WanCausalConv3d) for m in enc.modules())
        tile_caches = {(i, j): [None] * n_convs for i in range(len(rows)) for j in range(len(cols))}
        trunk_cache = [None] * n_convs
        chunks = [(0, 1)] + [(f, f + 4) for f in range(1, n_frames, 4)]
        out = []
        for f0, f1 in chunks:
            out_rows = []
            for i, (a, b) in enumerate(rows):
                y0, y1 = max(a * r - left, 0), min(b * r + right, height)
                out_cols = []
                for j, (c, d) in enumerate(cols):
                    x0, x1 = max(c * r - left, 0), min(d * r + right, width)
                    cache, idx = tile_caches[i, j], [0]
                    x = video[:, :, f0:f1, y0:y1, x0:x1].to(self.device, self.dtype).contiguous()
                    x = _cached_conv(enc.conv_in, x, cache, idx)
                    for layer in enc.down_blocks:
                        x = layer(x, feat_cache=cache, feat_idx=idx)
                    out_cols.append(x[:, :, :, a - y0 // r:b - y0 // r, c - x0 // r:d - x0 // r])
                out_rows.append(torch.cat(out_cols, dim=-1))
            x = torch.cat(out_rows, dim=-2)
            idx = [idx[0]]  # every tile ran the same convs: the whole-frame part continues the numbering
            x = enc.mid_block(x, feat_cache=trunk_cache, feat_idx=idx)
            out.append(_cached_conv(enc.conv_out, enc.nonlinearity(enc.norm_out(x)), trunk_cache, idx))
        return vae.quant_conv(torch.cat(out, dim=2))

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


# ------------------------------------------------------------------------------------------------ halo tiling


def _even_split(n: int, parts: int) -> list[tuple[int, int]]:
    """[0, n) in `parts` contiguous ranges whose sizes differ by at most one."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _crop(t: Tensor, y0: int, x0: int, ys: tuple[int, int], xs: tuple[int, int], height: int,
          width: int) -> tuple[Tensor, int, int]:
    """t covers rows [y0, ...) and columns [x0, ...) of a [height, width] frame -> its part over ys x xs (clipped to
    the frame), contiguous like the whole-frame tensors, and that part's origin."""
    ya, yb = max(ys[0], 0), min(ys[1], height)
    xa, xb = max(xs[0], 0), min(xs[1], width)
    assert y0 <= ya and x0 <= xa and yb - y0 <= t.shape[-2] and xb - x0 <= t.shape[-1], "halo margin too small"
    return t[..., ya - y0:yb - y0, xa - x0:xb - x0].contiguous(), ya, xa


def _cached_conv(conv: nn.Module, x: Tensor, cache: list, idx: list[int]) -> Tensor:
    """A causal conv with the decoder/encoder feature cache, the way diffusers' Wan VAE runs its `conv_in`/
    `conv_out` (the last two time steps of the input are kept for the next chunk)."""
    i = idx[0]
    cache_x = x[:, :, -2:].clone()
    if cache_x.shape[2] < 2 and cache[i] is not None:
        cache_x = torch.cat([cache[i][:, :, -1:].to(cache_x.device), cache_x], dim=2)
    x = conv(x, cache[i])
    cache[i] = cache_x
    idx[0] += 1
    return x


def _radius(conv: nn.Module) -> int:
    """Spatial reach of a stride-1 'same' conv (WanCausalConv3d or Conv2d) with a square odd kernel."""
    k = conv.kernel_size[-1]
    pad = conv._padding[0] if hasattr(conv, "_padding") else conv.padding[-1]
    assert k == 2 * pad + 1 and conv.kernel_size[-2] == k and conv.stride[-1] == 1, conv
    return pad


def _resnet_radius(block: nn.Module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock

    assert isinstance(block, WanResidualBlock), type(block)  # norms per position; the shortcut is 1x1x1
    return _radius(block.conv1) + _radius(block.conv2)


def _decoder_margins(decoder: nn.Module) -> tuple[list[int], int]:
    """Margins (pixels at each block's input resolution) that make a tile's core exact: one per upsampling block
    input, and the head's. Walked backwards from `conv_out`: a resnet adds its convs' reach; an upsampler adds its
    3x3 conv's reach at the upsampled resolution, then halves (nearest x2: output p reads input p // 2)."""
    head = _radius(decoder.conv_out)
    m, margins = head, []
    for block in reversed(decoder.up_blocks):
        if block.upsamplers is not None:
            up = block.upsamplers[0]
            assert up.mode in ("upsample2d", "upsample3d") and up.resample[0].scale_factor == (2.0, 2.0), up
            m = -(-(m + _radius(up.resample[1])) // 2)
        m += sum(_resnet_radius(r) for r in block.resnets)
        margins.append(m)
    return margins[::-1], head


def _encoder_margins(encoder: nn.Module) -> tuple[int, int]:
    """(left/top, right/bottom) margins in input pixels that make a tile's core exact at the output of the
    downsampling blocks. Walked backwards: a resnet adds its convs' reach on both sides; a downsampler
    (zero pad right/bottom by 1, 3x3 conv, stride 2: output o reads inputs 2o .. 2o+2) doubles both and adds 1 on
    the right."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

    left = right = 0
    for layer in reversed(encoder.down_blocks):
        if isinstance(layer, WanResample):
            assert layer.mode in ("downsample2d", "downsample3d"), layer.mode
            left, right = 2 * left, 2 * right + 1
        else:
            r = _resnet_radius(layer)
            left, right = left + r, right + r
    r = _radius(encoder.conv_in)
    return left + r, right + r
