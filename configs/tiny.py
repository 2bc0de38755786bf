# The s1024_effn_f32 architecture at toy size, end to end (DiT, compressor backbone, previewer, VAE): for
# smoke tests and CI on a CPU. Frames are 64x64 per tile (latent 8x8), windows of 4 frames. With
# --random-init it needs no weights.
_base_ = ['./s1024_effn_f32.py']

num_frames_per_video = 4

model = dict(
    input_size=8,
    hidden_size=96,
    depth=4,
    num_heads=4,
    attn_strides=[[1, 2], [2, 1], None, [1, 2]],
    lats_per_vid=4,
)
compressor = dict(backbone='mobilenet_v3_small')  # 1/32 like EfficientNetV2-S, 0.9M instead of 20M parameters
previewer = dict(c_hidden=32)
vae = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
weights = dict(dit=['tiny.safetensors'])
sampling = dict(steps=2, segment_frames=16, tile_stride=6, batch_size=4)

# Training at toy size: a few dozen CPU steps overfit a short generated clip.
sample_size = 64
time_stride = 1
data = dict(short_video='pad', resize=True, hflip_prob=0.0)
train_batch_size = 2
num_workers = 0
grad_checkpointing = False
mixed_precision = 'no'
fp32_attention = False
optimizer = dict(type='CAME', lr=3e-4, weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
auto_lr = dict(rule=None)  # the toy lr above is used as it is
load_from = None  # trained from scratch
lr_schedule_args = dict(num_warmup_steps=0)
log_interval = 1
save_model_steps = 10
validation = dict(interval=20, steps=2)
