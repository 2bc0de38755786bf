#!/usr/bin/env bash
# Training the LDM-VAE lands with the training issue (cascadev train, accelerate launch).
echo "train_vae.sh: training is not implemented yet; see the project's training issue." >&2
exit 1
