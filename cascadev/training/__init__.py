"""Training the LDM-VAE's DiT (``cascadev train``): the release's recipe on accelerate."""
