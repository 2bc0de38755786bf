"""CascadeV: a video LDM-VAE (1x32x32 semantic latent -> DiT -> SVD decoder), after ByteDance's release.

One tensor convention throughout: a video in memory is ``(T, 3, H, W)`` float in [-1, 1]; uint8
``(T, H, W, 3)`` only at the file edge; the layout changes only at the DiT's input ``(B, C, T, H, W)``
and at the latent file ``(C, T, h, w)``. :mod:`cascadev.frames` states it and holds every pixel helper.
"""

__version__ = "0.1.0"
