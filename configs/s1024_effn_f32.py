# The released CascadeV LDM-VAE (ByteDance/CascadeV "s1024.effn-f32"): 1x32x32 compression at 1024x1024.
# mmengine-style Python config; derive variants with `_base_ = ['./s1024_effn_f32.py']` and override keys.

num_frames_per_video = 8  # frames per training clip, the DiT's window (lats_per_vid)
sr_scale = 4  # semantic latent (1/32) -> DiT / SVD latent (1/8)
scale_factor = 0.13025  # PixArt-Σ's SDXL value, applied to the SVD latent and the condition
condition = 'semantic'  # 'semantic' (20 input channels) or 'resize' (paper Fig. 4b, 8 input channels)

model = dict(
    type='CascadeDiT',
    input_size=128,  # sample_size // 8: the latent of a training crop
    patch_size=2,
    # in_channels follows `condition`: 4 noisy SVD-latent channels + 16 semantic ones (20), or + 4 (8)
    hidden_size=1152,
    depth=28,
    num_heads=16,
    mlp_ratio=4.0,
    pred_sigma=True,
    pe_interpolation=2.0,
    attn_strides=[
        [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1],
        None, None, None, None,
        [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1], [1, 4], [4, 1],
        None, None, None, None, None, None, None, None,
    ],
    lats_per_vid=8,
    fp32_attention=False,  # training under fp16 turns it on (the release trains with it)
)

# StableCascade's semantic compressor and previewer.
compressor = dict(type='EfficientNetEncoder', c_latent=16, backbone='efficientnet_v2_s')  # a torchvision constructor
previewer = dict(type='Previewer', c_in=16, c_hidden=512, c_out=3)

# Stable Video Diffusion's VAE. Pretrained weights come with their own config.json; these values are
# used only to build a randomly initialised one (--random-init).
vae = dict(
    type='AutoencoderKLTemporalDecoder',
    in_channels=3,
    out_channels=3,
    down_block_types=['DownEncoderBlock2D'] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    sample_size=768,
    scaling_factor=0.18215,  # the VAE's own value; CascadeV uses scale_factor above instead
)

# Weight files, relative to weights_dir (pretrained/download.sh puts them there). For the DiT the
# first file that exists is used: tools/convert_checkpoint.py turns the release's .pth into safetensors.
weights_dir = 'pretrained'
weights_note = None  # said in place of the sources above when a file is missing (configs/nano.py has one)
weights = dict(
    dit=['s1024.effn-f32.safetensors', 's1024.effn-f32.pth'],
    compressor='effnet_encoder.safetensors',
    previewer='previewer.safetensors',
    vae='svd_vae',  # a diffusers folder: config.json + diffusion_pytorch_model(.fp16).safetensors
)

# Diffusion schedule of training (improved-DDPM linear betas, 1000 steps) and sampling defaults.
schedule = dict(
    num_train_timesteps=1000, beta_schedule='linear', beta_start=0.0001, beta_end=0.02,
    prediction_type='epsilon',  # what the DiT predicts: 'epsilon' (the release) or 'v_prediction'
)
sampling = dict(
    scheduler='euler_a',  # euler_a | ddim | dpm_solver
    steps=8,
    vae_chunk=4,  # frames per SVD temporal-decoder call (the release decodes 8 frames as 2 x 4)
    segment_frames=64,  # latent frames sampled at once; bounds memory on long videos (0 = all)
    tile_stride=96,  # tiles of input_size latent pixels, 25% overlap (round(0.75 * 128))
    batch_size=1,  # windows x tiles per DiT call
    attention_backend='auto',  # SDPA kernel of the DiT's attention: auto (PyTorch's choice) | flash | efficient | cudnn | math
    compile=None,  # None (eager) or a torch.compile mode for each DiT block: default | reduce-overhead (+ CUDA graphs) | max-autotune
    vae_compile=False,  # the SVD decoder through torch.compile: 2.8x faster, ~45 s to compile per chunk shape (for batches)
)

# ------------------------------------------------------------------------------------------------
# Training (cascadev train / train_vae.sh): the release's recipe.
video_list = ['example/train.demo.txt']  # text files (one video or frame folder per line) or JSON files
sample_size = 1024  # training crops
time_stride = 4  # frames between the sampled frames of a clip
data = dict(short_video='skip', resize=False, hflip_prob=0.5,  # as the release: native-resolution crops
            crop='center', scale_range=(1.0, 1.0),  # augmentation: crop='random', scale_range=(lo, hi) with resize,
            gamma_range=(1.0, 1.0))  # and gamma_range=(lo, hi): brightness, each clip's frames to a random power
encode_chunk = 4  # frames per frozen-encoder call
cache_latents = False  # encode each clip once to work_dir/latent_cache (fixed clips) and reuse it
latent_cache_epochs = 1  # with cache_latents: the cache holds the clips of this many epochs; epoch e reads e % this
latent_cache_dir = None
joint_training = 0.1  # probability that a batch trains in image mode
seed = 0

num_workers = 4
train_batch_size = 4  # per process
num_epochs = 1000
gradient_accumulation_steps = 1
grad_checkpointing = True
gradient_clip = 0.01
mixed_precision = 'fp16'  # no | fp16 | bf16 (fp16 falls back to fp32 on a CPU)
fp32_attention = True  # attention products in fp32 under half precision (the release's; 7.1x slower training on an H100)
optimizer = dict(type='CAME', lr=2e-5, weight_decay=0.0, betas=(0.9, 0.999, 0.9999), eps=(1e-30, 1e-16))
# PixArt's auto_lr, as the release: lr = optimizer.lr * sqrt(global_batch / 256), global_batch = train_batch_size
# x processes x gradient_accumulation_steps (2.5e-6 on 1 GPU, 7.07e-6 on 8). auto_lr=None uses optimizer.lr as is.
auto_lr = dict(rule='sqrt')
lr_schedule_args = dict(num_warmup_steps=1000)  # then constant
ema = dict(enabled=False, decay=0.9999)
# The release fine-tunes the released DiT (the first existing file is used). Train from scratch with
# --cfg-options load_from=None. Ignored when the work dir holds a checkpoint to resume from.
load_from = ['pretrained/s1024.effn-f32.safetensors', 'pretrained/s1024.effn-f32.pth']
frozen_modules = []  # submodules of the trained network that keep their weights, e.g. ['encoder', 'quant_conv']

log_interval = 5
save_model_steps = 1000
keep_checkpoints = 3  # newest K checkpoints kept in the work dir (0 = all)
validation = dict(video=None, interval=1000, steps=8, scheduler='euler_a')  # a held-out clip

# `cascadev train-ae --part compressor|vae` (cascadev/training/autoencoders.py): per-part overrides of the
# training keys above, e.g. dict(vae=dict(train_batch_size=2, sample_size=256)); configs/nano.py uses it.
# There load_from is the folder of weights a part starts from (what --weights-dir names), None by default.
autoencoder_training = dict(compressor=dict(), vae=dict())
kl_weight = 1e-4  # the VAE's KL term, per latent element, next to its L1 + MSE reconstruction loss
