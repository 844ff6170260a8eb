// 2-D convolution: groups 1, dilation 1, zero padding, stride s, padding p.
// Activations NCHW (possibly channel-slice views), weights OIHW (Cout, Cin, KH, KW).
//   forward:         y[n,co,oh,ow]   = b[co] + sum_{ci,kh,kw} w[co,ci,kh,kw] * x'[n,ci,oh*s-p+kh,ow*s-p+kw]
//   backward_data:   d_x[n,ci,ih,iw] += sum_{co,kh,kw} d_y[n,co,oh,ow] * w[co,ci,kh,kw]
//                        over oh = (ih+p-kh)/s, ow = (iw+p-kw)/s where the division is exact
//                        and in range (gather form: no atomics)
//   backward_weight: d_w[co,ci,kh,kw] += sum_{n,oh,ow} d_y[n,co,oh,ow] * x'[n,ci,oh*s-p+kh,ow*s-p+kw]
//                    d_b[co]          += sum_{n,oh,ow} d_y[n,co,oh,ow]
//   x' = x, or with the BN+ReLU prologue x' = max(scale[ci]*x + shift[ci], 0) for in-bounds
//   pixels (padding stays exactly 0).
//
// Register tiling, no shared memory, no barriers. Every invocation owns a tile of outputs:
// CH_TILE channels taken from the workgroup id (tile_id or workgroup_id.y), so their weight (forward / backward_data) or
// d_y (backward_weight) loads are workgroup-uniform, times a per-lane axis (pixels or weight
// columns). On lavapipe every load instruction costs about the same whether workgroup-
// uniform or not, and a vec4 load costs about one scalar load, so the kernels maximise
// FMAs per load instruction: weights are repacked (pack_weight) and d_y transposed
// (to_pixel_major) so that 4 channels are one vec4, and the blocked kernels keep their tile
// in 4 x 4 blocks indexed by constants only (see mac_tile).
//   conv1x1 / conv3x3 (vec4 layout), forward_tiled (any other forward): blocked.
//   backward_data (not vec4 layout): CH_TILE input channels x PX_TILE input pixels.
//   backward_weight_dot / _rows / _strided / _partial: partial sums of d_w over one chunk of
//     the (n, oh, ow) axis (workgroup_id.z); backward_weight_reduce sums the chunks in fixed
//     order and adds into d_w / d_b.
//
// The register-tiled module is this file (DataParams, dispatch order, the blocked tile) and
// forward.wgsl (conv1x1, conv3x3, forward_tiled), backward_data.wgsl, backward_weight.wgsl,
// layout.wgsl (pack_weight, repad, to_pixel_major), plus uniform_loads.wgsl or subgroup.wgsl.
// gemm.wgsl (implicit GEMM in workgroup memory) and winograd.wgsl are modules of their own.

override WG: u32 = 64;
override CH_TILE: u32 = 8;
override PX_TILE: u32 = 2;
override PROLOGUE: bool = false;
const MAX_CH: u32 = 16u;
const MAX_PX: u32 = 8u;
override PXV: u32 = 1;        // blocked kernels: blocks of 4 per invocation (1 or 2)
const MAX_PXV: u32 = 2u;

// Each family of kernels has its own uniform, all at binding 0: DataParams (p) for the
// forward and backward-data kernels here, WeightParams (weight_params) and ReduceParams (pr) in
// backward_weight.wgsl, LayoutParams (pl) in layout.wgsl.
struct DataParams {
    inp: View,       // x (forward) or d_y (backward_data)
    out: View,       // y (forward) or d_x (backward_data)
    n: u32,
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    out_c: u32,      // channels written: Cout (forward) or Cin (backward_data)
    red_c: u32,      // channels summed over: Cin (forward) or Cout (backward_data)
    accumulate: u32, // 1: out += sum (backward_data); 0: out = sum + bias
    has_bias: u32,
    b_off: u32,      // offset of the bias
    w_off: u32,      // offset of the weight read: w (general backward_data) or the packed weight
    sc_off: u32,     // offset of the prologue scale
    sh_off: u32,     // offset of the prologue shift
    w_image_stride: u32, // conv1x1: floats between the packed weights of consecutive images
                         // (0: one weight for all; else no workgroup may straddle two images)
}

@group(0) @binding(0) var<uniform> p: DataParams;

// The forward / backward_data kernels run channel tiles on workgroup_id.x and pixel blocks
// folded over (y, z) (see Gpu::grid_1d): workgroups that follow each other in dispatch order
// read the same input pixels for different output channels, so the input stays in the
// CPU caches on lavapipe (which hands each thread a contiguous run of workgroups) and in
// L2 on a GPU.
fn block_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.y + wg.z * nwg.y;
}
fn tile_id(wg: vec3<u32>) -> u32 {
    return wg.x;
}

// =======================================================================================
// vec4 fast paths. They need H*W % 4 == 0 and 16-byte aligned views (offset and
// batch_stride multiples of 4), so four consecutive flat pixels of one channel are one
// vec4 and never straddle an image. One invocation owns CH_TILE channels x 4 pixels.
// Both serve forward and backward_data through p.out_c / p.red_c / p.w_*_stride:
//   out[n, oc, q] (= bias[oc] +) / (+=) sum_rc,taps w[oc * w_out_stride + rc * w_red_stride + tap]
//                                                   * inp'[n, rc, q shifted by the tap]

// The register tile of conv1x1 / conv3x3: up to 4 x 2 blocks of 4 x 4. Block
// acc[2 * cb + j] holds channels 4 cb .. 4 cb + 3 (its columns) at the 4 pixels of the
// lane's pixel group j (a column is a vec4 over the pixels). Blocks beyond CH_TILE / PXV are
// removed at pipeline creation (their guards are override constants). Every index into the
// tile is a constant, so it stays in registers (a loop over the tile would leave dynamic
// indices when the loop is not unrolled, and lavapipe would spill the tile to memory).
alias Tile8 = array<mat4x4<f32>, 8>;

// w.x .. w.w: the weights of 4 channels; x: one input value at 4 pixels.
fn outer4(w: vec4<f32>, x: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(x * w.x, x * w.y, x * w.z, x * w.w);
}

// acc += w (x) x for one summed channel: w0 .. w3 weights of channels 0-3 .. 12-15,
// x0 / x1 the inputs of pixel groups 0 / 1.
fn mac_tile(acc: ptr<function, Tile8>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>,
            w3: vec4<f32>, x0: vec4<f32>, x1: vec4<f32>) {
    (*acc)[0] += outer4(w0, x0);
    if (PXV > 1u) { (*acc)[1] += outer4(w0, x1); }
    if (CH_TILE > 4u) {
        (*acc)[2] += outer4(w1, x0);
        if (PXV > 1u) { (*acc)[3] += outer4(w1, x1); }
    }
    if (CH_TILE > 8u) {
        (*acc)[4] += outer4(w2, x0);
        if (PXV > 1u) { (*acc)[5] += outer4(w2, x1); }
    }
    if (CH_TILE > 12u) {
        (*acc)[6] += outer4(w3, x0);
        if (PXV > 1u) { (*acc)[7] += outer4(w3, x1); }
    }
}
