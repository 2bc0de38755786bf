# The s1024_effn_f32 architecture at toy size: runs end to end on a CPU in seconds, for smoke tests and
# CI. Frames are 64x64 per tile (latent 8x8), windows of 4 frames. With --random-init it needs no weights.
_base_ = ['./s1024_effn_f32.py']

image_size = 64
num_frames_per_video = 4

model = dict(
    input_size=8,
    hidden_size=96,
    depth=4,
    num_heads=4,
    attn_strides=[[1, 2], [2, 1], None, [1, 2]],
    lats_per_vid=4,
)
previewer = dict(c_hidden=32)
vae = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
weights = dict(dit=['tiny.safetensors'])
sampling = dict(steps=2, segment_frames=16, tile_stride=6, batch_size=4)
