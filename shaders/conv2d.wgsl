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

override WG: u32 = 64;
override CH_TILE: u32 = 8;
override PX_TILE: u32 = 2;
override PROLOGUE: bool = false;
const MAX_CH: u32 = 16u;
const MAX_PX: u32 = 8u;
override PXV: u32 = 1;        // blocked kernels: blocks of 4 per invocation (1 or 2)
const MAX_PXV: u32 = 2u;

struct Params {
    inp: View,       // x (forward, backward_weight) or d_y (backward_data)
    out: View,       // y (forward), d_x (backward_data) or d_y (backward_weight)
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
    has_bias: u32,
    w_off: u32,      // offset of w (or d_w) in its buffer
    b_off: u32,      // offset of b (or d_b)
    sc_off: u32,     // offset of the prologue scale
    sh_off: u32,     // offset of the prologue shift
    chunk_len: u32,  // backward_weight: pixels (n, oh, ow) per chunk
    chunks: u32,     // backward_weight: number of chunks
    part_stride: u32, // backward_weight: floats per chunk in the scratch (Cout*Cin*KH*KW + Cout)
    total: u32,      // backward_weight_reduce: elements to reduce
    out_c: u32,      // conv1x1 / conv3x3: channels written (Cout forward, Cin backward_data)
    red_c: u32,      // conv1x1 / conv3x3: channels summed over (Cin forward, Cout backward_data)
    w_out_stride: u32, // weight stride of an out channel (Cin*KH*KW forward, KH*KW backward_data)
    w_red_stride: u32, // weight stride of a summed channel (KH*KW forward, Cin*KH*KW backward_data)
    flip: u32,       // pack_weight: 1 = rotate the kernel by 180 degrees (backward_data)
    accumulate: u32, // conv1x1 / conv3x3: 1 = out += sum (backward_data), 0 = out = sum + bias
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

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

// ---------------------------------------------------------------------------------------
// backward_data bindings
@group(0) @binding(1) var<storage, read> bd_d_y: array<f32>;       // (N, Cout, OH, OW) via p.inp
@group(0) @binding(2) var<storage, read> bd_w: array<f32>;         // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(3) var<storage, read_write> bd_d_x: array<f32>; // (N, Cin, H, W) via p.out

@compute @workgroup_size(WG)
fn backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let hw = p.h * p.w;
    let npix = p.n * hw;
    let ohw = p.oh * p.ow;
    let kk = p.kh * p.kw;
    let wrow = p.cin * kk;
    let ci0 = tile_id(wg) * CH_TILE;
    let q0 = block_id(wg, nwg) * (WG * PX_TILE) + li;
    let s = i32(p.stride);

    var th0: array<i32, MAX_PX>;  // ih + pad
    var tw0: array<i32, MAX_PX>;  // iw + pad
    var yb: array<u32, MAX_PX>;   // index of d_y[n, 0, 0, 0]
    for (var j = 0u; j < PX_TILE; j++) {
        let q = min(q0 + j * WG, npix - 1u);
        let n = q / hw;
        let r = q - n * hw;
        let ih = r / p.w;
        let iw = r - ih * p.w;
        th0[j] = i32(ih + p.pad);
        tw0[j] = i32(iw + p.pad);
        yb[j] = p.inp.offset + n * p.inp.batch_stride;
    }
    // Weight offset of each input channel (clamped for the remainder tile).
    var wb: array<u32, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        wb[i] = p.w_off + min(ci0 + i, p.cin - 1u) * kk;
    }

    var acc: array<f32, 128>;
    for (var t = 0u; t < CH_TILE * PX_TILE; t++) {
        acc[t] = 0.0;
    }

    for (var kh = 0u; kh < p.kh; kh++) {
        for (var kw = 0u; kw < p.kw; kw++) {
            var ok: array<bool, MAX_PX>;
            var yi: array<u32, MAX_PX>;   // index of d_y[n, 0, oh, ow] (or a safe one)
            for (var j = 0u; j < PX_TILE; j++) {
                let th = th0[j] - i32(kh);
                let tw = tw0[j] - i32(kw);
                let oh = th / s;
                let ow = tw / s;
                ok[j] = th >= 0 && tw >= 0 && oh * s == th && ow * s == tw
                    && oh < i32(p.oh) && ow < i32(p.ow);
                yi[j] = select(yb[j], yb[j] + u32(oh) * p.ow + u32(ow), ok[j]);
            }
            let kof = kh * p.kw + kw;
            for (var co = 0u; co < p.cout; co++) {
                var gv: array<f32, MAX_PX>;
                for (var j = 0u; j < PX_TILE; j++) {
                    gv[j] = select(0.0, bd_d_y[yi[j] + co * ohw], ok[j]);
                }
                let wo = co * wrow + kof;
                for (var i = 0u; i < CH_TILE; i++) {
                    let wv = bd_w[wb[i] + wo];
                    for (var j = 0u; j < PX_TILE; j++) {
                        acc[i * PX_TILE + j] = fma(wv, gv[j], acc[i * PX_TILE + j]);
                    }
                }
            }
        }
    }

    for (var j = 0u; j < PX_TILE; j++) {
        let q = q0 + j * WG;
        if (q >= npix) { continue; }
        let n = q / hw;
        let r = q - n * hw;
        let xb = p.out.offset + n * p.out.batch_stride + r;
        for (var i = 0u; i < CH_TILE; i++) {
            let ci = ci0 + i;
            if (ci >= p.cin) { continue; }
            bd_d_x[xb + ci * hw] += acc[i * PX_TILE + j];
        }
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_partial bindings
@group(0) @binding(1) var<storage, read> bw_d_y: array<f32>;       // (N, Cout, OH, OW) via p.out
@group(0) @binding(2) var<storage, read> bw_x: array<f32>;         // (N, Cin, H, W) via p.inp
@group(0) @binding(3) var<storage, read> bw_scale: array<f32>;     // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> bw_shift: array<f32>;     // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> bw_part: array<f32>; // (chunks, Cout*Cin*KH*KW + Cout)

@compute @workgroup_size(WG)
fn backward_weight_partial(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(local_invocation_index) li: u32) {
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    let npix = p.n * ohw;
    let kk = p.kh * p.kw;
    let ncol = p.cin * kk;
    let co0 = wg.y * CH_TILE;
    let k0 = wg.x * (WG * PX_TILE) + li;
    let chunk = wg.z;
    let q_begin = chunk * p.chunk_len;
    let q_end = min(q_begin + p.chunk_len, npix);

    // Per-column geometry: column k = (ci, kh, kw).
    var dh: array<i32, MAX_PX>;   // kh - pad
    var dw: array<i32, MAX_PX>;   // kw - pad
    var xc: array<u32, MAX_PX>;   // index of x[0, ci, 0, 0]
    var sc: array<f32, MAX_PX>;
    var sh: array<f32, MAX_PX>;
    for (var j = 0u; j < PX_TILE; j++) {
        let k = min(k0 + j * WG, ncol - 1u);
        let ci = k / kk;
        let r = k - ci * kk;
        let kh = r / p.kw;
        let kw = r - kh * p.kw;
        dh[j] = i32(kh) - i32(p.pad);
        dw[j] = i32(kw) - i32(p.pad);
        xc[j] = p.inp.offset + ci * hw;
        if (PROLOGUE) {
            sc[j] = bw_scale[p.sc_off + ci];
            sh[j] = bw_shift[p.sh_off + ci];
        }
    }
    var yc: array<u32, MAX_CH>;   // index of d_y[0, co, 0, 0] (clamped channel)
    for (var i = 0u; i < CH_TILE; i++) {
        yc[i] = p.out.offset + min(co0 + i, p.cout - 1u) * ohw;
    }

    var acc: array<f32, 128>;
    var bacc: array<f32, MAX_CH>;
    for (var t = 0u; t < CH_TILE * PX_TILE; t++) {
        acc[t] = 0.0;
    }
    for (var i = 0u; i < CH_TILE; i++) {
        bacc[i] = 0.0;
    }

    if (q_begin < q_end) {
        var n = q_begin / ohw;
        let r0 = q_begin - n * ohw;
        var oh = r0 / p.ow;
        var ow = r0 - oh * p.ow;
        for (var q = q_begin; q < q_end; q++) {
            let ih0 = i32(oh * p.stride);
            let iw0 = i32(ow * p.stride);
            let xn = n * p.inp.batch_stride;
            var xv: array<f32, MAX_PX>;
            for (var j = 0u; j < PX_TILE; j++) {
                let ih = ih0 + dh[j];
                let iw = iw0 + dw[j];
                let ok = ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w);
                var v = bw_x[select(xc[j], xc[j] + xn + u32(ih) * p.w + u32(iw), ok)];
                if (PROLOGUE) {
                    v = max(fma(v, sc[j], sh[j]), 0.0);
                }
                xv[j] = select(0.0, v, ok);
            }
            let yo = n * p.out.batch_stride + oh * p.ow + ow;
            for (var i = 0u; i < CH_TILE; i++) {
                let g = bw_d_y[yc[i] + yo];
                bacc[i] += g;
                for (var j = 0u; j < PX_TILE; j++) {
                    acc[i * PX_TILE + j] = fma(g, xv[j], acc[i * PX_TILE + j]);
                }
            }
            ow += 1u;
            if (ow == p.ow) {
                ow = 0u;
                oh += 1u;
                if (oh == p.oh) {
                    oh = 0u;
                    n += 1u;
                }
            }
        }
    }

    let base = chunk * p.part_stride;
    for (var i = 0u; i < CH_TILE; i++) {
        let co = co0 + i;
        if (co >= p.cout) { continue; }
        for (var j = 0u; j < PX_TILE; j++) {
            let k = k0 + j * WG;
            if (k < ncol) {
                bw_part[base + co * ncol + k] = acc[i * PX_TILE + j];
            }
        }
        if (wg.x == 0u && li == 0u) {
            bw_part[base + p.cout * ncol + co] = bacc[i];
        }
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_reduce bindings
@group(0) @binding(1) var<storage, read> br_part: array<f32>;       // (chunks, Cout*Cin*KH*KW + Cout)
@group(0) @binding(2) var<storage, read_write> br_d_w: array<f32>;  // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(3) var<storage, read_write> br_d_b: array<f32>;  // (Cout) at p.b_off, if p.has_bias

@compute @workgroup_size(WG)
fn backward_weight_reduce(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    var s = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        s += br_part[c * p.part_stride + e];
    }
    let nw = p.cout * p.cin * p.kh * p.kw;
    if (e < nw) {
        br_d_w[p.w_off + e] += s;
    } else if (p.has_bias != 0u) {
        br_d_b[p.b_off + e - nw] += s;
    }
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

// ---------------------------------------------------------------------------------------
// conv1x1: 1x1 kernel, stride 1, no padding: a GEMM over channels per pixel.
//   forward:       y[n,co,q]    = b[co] + sum_ci w[co,ci] * x'[n,ci,q]
//   backward_data: d_x[n,ci,q] += sum_co w[co,ci] * d_y[n,co,q]
// One invocation owns CH_TILE channels (4 .. 16, from workgroup_id.y) x PXV pixel groups of
// 4 (lane l of a block owns the groups l, l + WG).
@group(0) @binding(1) var<storage, read> c1_inp: array<vec4<f32>>;        // (N, red_c, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read> c1_w: array<vec4<f32>>;          // (red_c, OCP) packed (pack_weight)
@group(0) @binding(3) var<storage, read> c1_b: array<f32>;                // (out_c) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> c1_scale: array<f32>;            // (red_c) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> c1_shift: array<f32>;            // (red_c) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> c1_out: array<vec4<f32>>;  // (N, out_c, H*W/4) via p.out

// vec4 index of the packed weights of channels oc0 + 4 cb .. + 3 (clamped to the last
// block; clamped channels are never stored).
fn w_block(oc0: u32, cb: u32) -> u32 {
    return min(oc0 / 4u + cb, (p.out_c + 3u) / 4u - 1u);
}
// Stores block `blk` (channels oc0 + 4 cb .. + 3) at vec4 index ob (+ channel * hw4).
fn c1_store(blk: mat4x4<f32>, oc0: u32, cb: u32, ob: u32, hw4: u32) {
    var b = blk;
    for (var c = 0u; c < 4u; c++) {
        let oc = oc0 + 4u * cb + c;
        if (oc >= p.out_c || 4u * cb + c >= CH_TILE) { return; }
        let o = ob + oc * hw4;
        if (p.accumulate != 0u) {
            c1_out[o] += b[c];
        } else if (p.has_bias != 0u) {
            c1_out[o] = b[c] + vec4(c1_b[p.b_off + oc]);
        } else {
            c1_out[o] = b[c];
        }
    }
}

// Shared pieces of conv1x1 / conv1x1_sg (and of conv3x3 below): the
// weights of one summed channel for the 4 channel blocks of the tile, as 4 vec4s.
struct W4 {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
}

// Packed weight row `row` at the tile's blocks os = (o0, o1, o2, o3).
fn c1_load(row: u32, ocp4: u32, os: vec4<u32>) -> W4 {
    let wo = row * ocp4;
    var w = W4(c1_w[wo + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) { w.w1 = c1_w[wo + os.y]; }
    if (CH_TILE > 8u) { w.w2 = c1_w[wo + os.z]; }
    if (CH_TILE > 12u) { w.w3 = c1_w[wo + os.w]; }
    return w;
}

// What conv1x1 needs of summed channel rc besides its inputs: the tile's weights and,
// with the prologue, the channel's (scale, shift). Both are the same for every lane.
struct C1Coef {
    w: W4,
    pro: vec2<f32>,
}

fn c1_coef(rc: u32, ocp4: u32, os: vec4<u32>) -> C1Coef {
    var c = C1Coef(c1_load(rc, ocp4, os), vec2(1.0, 0.0));
    if (PROLOGUE) { c.pro = vec2(c1_scale[p.sc_off + rc], c1_shift[p.sh_off + rc]); }
    return c;
}

// One summed channel rc: acc += w (x) inp'[rc] at the lane's pixel groups (vec4 indices
// ia, ib of channel 0).
fn c1_chan(acc: ptr<function, Tile8>, rc: u32, ia: u32, ib: u32, hw4: u32, c: C1Coef) {
    var xa = c1_inp[ia + rc * hw4];
    var xb = vec4(0.0);
    if (PXV > 1u) { xb = c1_inp[ib + rc * hw4]; }
    if (PROLOGUE) {
        let sc = vec4(c.pro.x);
        let sh = vec4(c.pro.y);
        xa = max(fma(xa, sc, sh), vec4(0.0));
        xb = max(fma(xb, sc, sh), vec4(0.0));
    }
    mac_tile(acc, c.w.w0, c.w.w1, c.w.w2, c.w.w3, xa, xb);
}

// The body of the conv1x1 entry points; `sl` is the lane's subgroup_invocation_id (0 in
// the plain module). The weights (and prologue coefficients) of channel rc come from
// c1_weights (conv2d_uniform_loads.wgsl or conv2d_subgroup.wgsl), which may keep state in
// `l` across channels.
fn c1_body(wg: vec3<u32>, nwg: vec3<u32>, li: u32, sl: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let ngrp = p.n * hw4;
    let ga = block_id(wg, nwg) * (WG * PXV) + li;
    let gb = ga + WG;
    let na = min(ga, ngrp - 1u) / hw4;
    let nb = min(gb, ngrp - 1u) / hw4;
    // vec4 index of inp[n, 0, group] for groups a and b
    let ia = (p.inp.offset + na * p.inp.batch_stride) / 4u + (min(ga, ngrp - 1u) - na * hw4);
    let ib = (p.inp.offset + nb * p.inp.batch_stride) / 4u + (min(gb, ngrp - 1u) - nb * hw4);
    let oc0 = tile_id(wg) * CH_TILE;
    let os = vec4(w_block(oc0, 0u), w_block(oc0, 1u), w_block(oc0, 2u), w_block(oc0, 3u));
    let ocp4 = (p.out_c + 3u) / 4u;
    // The channels below the last multiple of 8 take their weights from c1_weights (which
    // may share loads across groups of 8 lanes), the rest load them directly: two loops, so
    // the loop body has no branch on which case applies.
    let red8 = p.red_c / 8u * 8u;
    var acc: Tile8;
    var l: C1Coef;
    for (var rc = 0u; rc < red8; rc++) {
        c1_chan(&acc, rc, ia, ib, hw4, c1_weights(&l, rc, ocp4, os, sl));
    }
    for (var rc = red8; rc < p.red_c; rc++) {
        c1_chan(&acc, rc, ia, ib, hw4, c1_coef(rc, ocp4, os));
    }
    if (ga < ngrp) {
        let ob = (p.out.offset + na * p.out.batch_stride) / 4u + (ga - na * hw4);
        c1_store(acc[0], oc0, 0u, ob, hw4);
        c1_store(acc[2], oc0, 1u, ob, hw4);
        c1_store(acc[4], oc0, 2u, ob, hw4);
        c1_store(acc[6], oc0, 3u, ob, hw4);
    }
    if (PXV > 1u && gb < ngrp) {
        let ob = (p.out.offset + nb * p.out.batch_stride) / 4u + (gb - nb * hw4);
        c1_store(acc[1], oc0, 0u, ob, hw4);
        c1_store(acc[3], oc0, 1u, ob, hw4);
        c1_store(acc[5], oc0, 2u, ob, hw4);
        c1_store(acc[7], oc0, 3u, ob, hw4);
    }
}

// ---------------------------------------------------------------------------------------
// conv3x3: 3x3 kernel, stride 1, padding 1 (output size = input size).
//   forward:       y[n,co,h,w]    = b[co] + sum_{ci,i,j} w[co,ci,i,j]     * x'[n,ci,h+i-1,w+j-1]
//   backward_data: d_x[n,ci,h,w] += sum_{co,i,j} w[co,ci,2-i,2-j] * d_y[n,co,h+i-1,w+j-1]
// One invocation owns CH_TILE channels (4 .. 16) x 4*PXV consecutive flat pixels q0 ..
// q0+4*PXV-1 (PXV = 2 needs H*W % 8 == 0, so the 8 pixels lie in one image). For tap row i
// their inputs at taps j = 0..2 are the flat elements q0 + (i-1)*W - 1 + [0, 4*PXV+2):
// PXV + 2 aligned vec4 loads cover them; the misalignment r is the same for every lane.
// Out-of-image taps (padding, row wrap) are masked to 0.
@group(0) @binding(1) var<storage, read> c3_inp: array<vec4<f32>>;        // (N, red_c, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read> c3_w: array<vec4<f32>>;          // (red_c * 9, OCP) packed (pack_weight)
@group(0) @binding(3) var<storage, read> c3_b: array<f32>;                // (out_c) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> c3_scale: array<f32>;            // (red_c) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> c3_shift: array<f32>;            // (red_c) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> c3_out: array<vec4<f32>>;  // (N, out_c, H*W/4) via p.out

// Elements r .. r+3 of the 8 consecutive elements a, b (r in 0..3).
fn window4(a: vec4<f32>, b: vec4<f32>, r: u32) -> vec4<f32> {
    var s = a;
    s = select(s, vec4(a.yzw, b.x), r == 1u);
    s = select(s, vec4(a.zw, b.xy), r == 2u);
    s = select(s, vec4(a.w, b.xyz), r == 3u);
    return s;
}
fn c3_store(blk: mat4x4<f32>, oc0: u32, cb: u32, ob: u32, hw4: u32) {
    var b = blk;
    for (var c = 0u; c < 4u; c++) {
        let oc = oc0 + 4u * cb + c;
        if (oc >= p.out_c || 4u * cb + c >= CH_TILE) { return; }
        let o = ob + oc * hw4;
        if (p.accumulate != 0u) {
            c3_out[o] += b[c];
        } else if (p.has_bias != 0u) {
            c3_out[o] = b[c] + vec4(c3_b[p.b_off + oc]);
        } else {
            c3_out[o] = b[c];
        }
    }
}
// The 3 tap inputs of pixel group `j` (0 or 1) for one tap row: ld the loaded window.
struct Taps {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
}
fn taps(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, r: u32, row_ok: vec4<bool>,
        col_l: vec4<bool>, col_r: vec4<bool>) -> Taps {
    let s = window4(a, b, r);
    let u = window4(b, c, r);
    return Taps(select(vec4(0.0), s, row_ok & col_l),
                select(vec4(0.0), vec4(s.yzw, u.x), row_ok),
                select(vec4(0.0), vec4(s.zw, u.xy), row_ok & col_r));
}

// The weights of the 4 channel blocks for the 3 taps of one kernel row.
struct W12 {
    t0: W4,
    t1: W4,
    t2: W4,
}

// Packed weights of summed channel rc, kernel row ti, at the tile's blocks os.
fn c3_load(rc: u32, ti: u32, ocp4: u32, os: vec4<u32>) -> W12 {
    let wa = (rc * 9u + 3u * ti) * ocp4;
    var w: W12;
    w.t0 = W4(c3_w[wa + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    w.t1 = W4(c3_w[wa + ocp4 + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    w.t2 = W4(c3_w[wa + 2u * ocp4 + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) {
        w.t0.w1 = c3_w[wa + os.y];
        w.t1.w1 = c3_w[wa + ocp4 + os.y];
        w.t2.w1 = c3_w[wa + 2u * ocp4 + os.y];
    }
    if (CH_TILE > 8u) {
        w.t0.w2 = c3_w[wa + os.z];
        w.t1.w2 = c3_w[wa + ocp4 + os.z];
        w.t2.w2 = c3_w[wa + 2u * ocp4 + os.z];
    }
    if (CH_TILE > 12u) {
        w.t0.w3 = c3_w[wa + os.w];
        w.t1.w3 = c3_w[wa + ocp4 + os.w];
        w.t2.w3 = c3_w[wa + 2u * ocp4 + os.w];
    }
    return w;
}

// What one summed channel's step of one kernel row needs besides its weights.
struct RowCtx {
    g0: i32,          // vec4 index of the window start for summed channel 0
    hw4: u32,
    last: i32,
    r: u32,           // misalignment of the window (same for every lane)
    ok_a: vec4<bool>, // tap row inside the image, pixel groups a / b
    ok_b: vec4<bool>,
    col_al: vec4<bool>,
    col_ar: vec4<bool>,
    col_bl: vec4<bool>,
    col_br: vec4<bool>,
}

// One summed channel rc, one kernel row: loads the window, shifts it for the 3 taps and
// accumulates the tile.
fn c3_chan(acc: ptr<function, Tile8>, rc: u32, c: RowCtx, w: W12) {
    let gi = c.g0 + i32(rc * c.hw4);
    var a = c3_inp[u32(clamp(gi, 0, c.last))];
    var b = c3_inp[u32(clamp(gi + 1, 0, c.last))];
    var d = c3_inp[u32(clamp(gi + 2, 0, c.last))];
    var e = vec4(0.0);
    if (PXV > 1u) { e = c3_inp[u32(clamp(gi + 3, 0, c.last))]; }
    if (PROLOGUE) {
        let sc = vec4(c3_scale[p.sc_off + rc]);
        let sh = vec4(c3_shift[p.sh_off + rc]);
        a = max(fma(a, sc, sh), vec4(0.0));
        b = max(fma(b, sc, sh), vec4(0.0));
        d = max(fma(d, sc, sh), vec4(0.0));
        e = max(fma(e, sc, sh), vec4(0.0));
    }
    let ta = taps(a, b, d, c.r, c.ok_a, c.col_al, c.col_ar);
    var tb = Taps(vec4(0.0), vec4(0.0), vec4(0.0));
    if (PXV > 1u) { tb = taps(b, d, e, c.r, c.ok_b, c.col_bl, c.col_br); }
    mac_tile(acc, w.t0.w0, w.t0.w1, w.t0.w2, w.t0.w3, ta.x0, tb.x0);
    mac_tile(acc, w.t1.w0, w.t1.w1, w.t1.w2, w.t1.w3, ta.x1, tb.x1);
    mac_tile(acc, w.t2.w0, w.t2.w1, w.t2.w2, w.t2.w3, ta.x2, tb.x2);
}

// The body of the conv3x3 entry points (`sl` as in c1_body; weights from c3_weights).
fn c3_body(wg: vec3<u32>, nwg: vec3<u32>, li: u32, sl: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let hwb = hw4 / PXV;                      // pixel blocks per image
    let nblk = p.n * hwb;
    let gid = block_id(wg, nwg) * WG + li;
    let g = min(gid, nblk - 1u);
    let n = g / hwb;
    let q0 = (g - n * hwb) * 4u * PXV;
    let ib = i32((p.inp.offset + n * p.inp.batch_stride) / 4u + q0 / 4u);
    let wi = i32(p.w);
    let hi = i32(p.h);
    let qa = vec4(q0) + vec4(0u, 1u, 2u, 3u);
    let qb = qa + vec4(4u);
    let row_a = vec4<i32>(qa / p.w);
    let row_b = vec4<i32>(qb / p.w);
    let col_a = vec4<i32>(qa % p.w);
    let col_b = vec4<i32>(qb % p.w);
    let oc0 = tile_id(wg) * CH_TILE;
    let os = vec4(w_block(oc0, 0u), w_block(oc0, 1u), w_block(oc0, 2u), w_block(oc0, 3u));
    let ocp4 = (p.out_c + 3u) / 4u;
    let red8 = p.red_c / 8u * 8u;
    var acc: Tile8;
    var c: RowCtx;
    c.hw4 = hw4;
    c.last = i32(arrayLength(&c3_inp)) - 1;
    c.col_al = col_a >= vec4(1);
    c.col_ar = col_a < vec4(wi - 1);
    c.col_bl = col_b >= vec4(1);
    c.col_br = col_b < vec4(wi - 1);
    for (var ti = 0u; ti < 3u; ti++) {
        let dh = i32(ti) - 1;
        let ra = row_a + vec4(dh);
        let rb = row_b + vec4(dh);
        c.ok_a = (ra >= vec4(0)) & (ra < vec4(hi));
        c.ok_b = (rb >= vec4(0)) & (rb < vec4(hi));
        let shift = dh * wi - 1;          // window start relative to q0
        c.g0 = ib + (shift >> 2u);        // floor(shift / 4)
        c.r = u32(shift & 3);
        var l: W12;
        for (var rc = 0u; rc < red8; rc++) {
            c3_chan(&acc, rc, c, c3_weights(&l, rc, ti, ocp4, os, sl));
        }
        for (var rc = red8; rc < p.red_c; rc++) {
            c3_chan(&acc, rc, c, c3_load(rc, ti, ocp4, os));
        }
    }

    if (gid >= nblk) { return; }
    let ob = (p.out.offset + n * p.out.batch_stride) / 4u + q0 / 4u;
    c3_store(acc[0], oc0, 0u, ob, hw4);
    c3_store(acc[2], oc0, 1u, ob, hw4);
    c3_store(acc[4], oc0, 2u, ob, hw4);
    c3_store(acc[6], oc0, 3u, ob, hw4);
    if (PXV > 1u) {
        c3_store(acc[1], oc0, 0u, ob + 1u, hw4);
        c3_store(acc[3], oc0, 1u, ob + 1u, hw4);
        c3_store(acc[5], oc0, 2u, ob + 1u, hw4);
        c3_store(acc[7], oc0, 3u, ob + 1u, hw4);
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_rows: 3x3 kernel (KT = 3 taps per row), stride 1, pad 1, vec4 layout.
// One invocation owns CH_TILE output channels (4 .. 16, from workgroup_id.y) x PX_TILE (1 or
// 2) kernel rows (ci, kh) (lane l: rows l, l + WG) x the 3 taps of a row, summed over one
// chunk of pixel groups of 4. Per group and row it loads the 3 aligned vec4s covering the
// flat window q0 + (kh-1)*W - 1 + [0, 6) once and shifts it for the 3 taps; the d_y loads
// are workgroup-uniform vec4s. The tile acc[(j * KT + t) * 4 + cb] holds, for row j and tap t,
// the sums of channels 4 cb .. 4 cb + 3 (a vec4 over channels: x_t * G_cb, with G_cb's
// columns the 4 channels' d_y vec4s, is the 4 dot products over the group's pixels); all
// its indices are constants so it stays in registers. Output layout as
// backward_weight_partial (column (ci, kh, kw) = row * KT + kw); p.chunk_len counts pixel
// groups of 4.
@group(0) @binding(1) var<storage, read> bq_d_y: array<vec4<f32>>;        // (N, Cout, H*W/4) via p.out
@group(0) @binding(2) var<storage, read> bq_x: array<vec4<f32>>;          // (N, Cin, H*W/4) via p.inp
@group(0) @binding(3) var<storage, read> bq_scale: array<f32>;            // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> bq_shift: array<f32>;            // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> bq_part: array<f32>;       // (chunks, Cout*Cin*9 + Cout)

const KT: u32 = 3u;
alias RowTile = array<vec4<f32>, 24>;

fn bq_mac(acc: ptr<function, RowTile>, k: u32, x: vec4<f32>, g0: mat4x4<f32>,
          g1: mat4x4<f32>, g2: mat4x4<f32>, g3: mat4x4<f32>) {
    (*acc)[k] += x * g0;
    if (CH_TILE > 4u) { (*acc)[k + 1u] += x * g1; }
    if (CH_TILE > 8u) { (*acc)[k + 2u] += x * g2; }
    if (CH_TILE > 12u) { (*acc)[k + 3u] += x * g3; }
}

// d_y of the tile's 16 channels co0 .. co0 + 15 (clamped) at one pixel group: bq_dy16(yb,
// co0, hw4, sl)[cb] has channel co0 + 4 cb + c in column c; yb = vec4 index of
// d_y[n, 0, group]. Defined in conv2d_uniform_loads.wgsl / conv2d_subgroup.wgsl.
alias Dy16 = array<mat4x4<f32>, 4>;

// Writes the sums `a` of channels co0 + 4 cb .. + 3 for kernel row k, tap t.
fn bq_store(a: vec4<f32>, k: u32, t: u32, cb: u32, co0: u32, base: u32, ncol: u32) {
    if (k >= p.cin * KT) { return; }
    var v = a;
    for (var c = 0u; c < 4u; c++) {
        let co = co0 + 4u * cb + c;
        if (co >= p.cout || 4u * cb + c >= CH_TILE) { return; }
        bq_part[base + co * ncol + k * KT + t] = v[c];
    }
}

// The tap inputs of one kernel row at the pixel group (x' with the prologue, masked).
fn bq_row(gi: i32, last: i32, r: u32, dh: i32, sc: f32, sh: f32, rowv: vec4<i32>,
          col_l: vec4<bool>, col_r: vec4<bool>) -> Taps {
    var a = bq_x[u32(clamp(gi, 0, last))];
    var b = bq_x[u32(clamp(gi + 1, 0, last))];
    var c = bq_x[u32(clamp(gi + 2, 0, last))];
    if (PROLOGUE) {
        a = max(fma(a, vec4(sc), vec4(sh)), vec4(0.0));
        b = max(fma(b, vec4(sc), vec4(sh)), vec4(0.0));
        c = max(fma(c, vec4(sc), vec4(sh)), vec4(0.0));
    }
    let rv = rowv + vec4(dh);
    return taps(a, b, c, r, (rv >= vec4(0)) & (rv < vec4(i32(p.h))), col_l, col_r);
}

// The body of the backward_weight_rows entry points (`sl` as in c1_body; the d_y loads go
// through bq_dy16).
fn bq_rows(wg: vec3<u32>, li: u32, sl: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let ngrp = p.n * hw4;
    let nrow = p.cin * KT;
    let ncol = nrow * KT;
    let co0 = wg.y * CH_TILE;
    let ka = wg.x * (WG * PX_TILE) + li;
    let kb = ka + WG;
    let chunk = wg.z;
    let g_begin = chunk * p.chunk_len;
    let g_end = min(g_begin + p.chunk_len, ngrp);
    let last = i32(arrayLength(&bq_x)) - 1;
    let wi = i32(p.w);
    let hi = i32(p.h);
    let half = 1;

    // Geometry of rows a and b: row k = (ci, kh) reads x at the flat shift
    // d = (kh - pad) * W - pad: vec4 offset ci * H*W/4 + floor(d / 4), misalignment d mod 4.
    let ra = min(ka, nrow - 1u);
    let rb = min(kb, nrow - 1u);
    let ci_a = ra / KT;
    let ci_b = rb / KT;
    let dh_a = i32(ra - ci_a * KT) - half;
    let dh_b = i32(rb - ci_b * KT) - half;
    let d_a = dh_a * wi - half;
    let d_b = dh_b * wi - half;
    let xo_a = i32(ci_a * hw4) + (d_a >> 2u);
    let xo_b = i32(ci_b * hw4) + (d_b >> 2u);
    let r_a = u32(d_a & 3);
    let r_b = u32(d_b & 3);
    var sc_a = 1.0;
    var sh_a = 0.0;
    var sc_b = 1.0;
    var sh_b = 0.0;
    if (PROLOGUE) {
        sc_a = bq_scale[p.sc_off + ci_a];
        sh_a = bq_shift[p.sh_off + ci_a];
        sc_b = bq_scale[p.sc_off + ci_b];
        sh_b = bq_shift[p.sh_off + ci_b];
    }

    var acc: RowTile;
    var bsum: array<vec4<f32>, 4>;
    var g1 = mat4x4<f32>();
    var g2 = mat4x4<f32>();
    var g3 = mat4x4<f32>();
    var tb = Taps(vec4(0.0), vec4(0.0), vec4(0.0));
    let ones = vec4(1.0);

    // Walk the pixel groups of the chunk keeping (n, q0) and the rows / columns of the 4
    // pixels up to date without divisions (W >= 4, so a step of 4 wraps a row at most once).
    var n = g_begin / hw4;
    var q0 = (g_begin - n * hw4) * 4u;
    let qv0 = vec4<u32>(q0, q0 + 1u, q0 + 2u, q0 + 3u);
    var rowv = vec4<i32>(qv0 / p.w);
    var colv = vec4<i32>(qv0 % p.w);
    for (var g = g_begin; g < g_end; g++) {
        if (q0 == hw4 * 4u) {
            q0 = 0u;
            n += 1u;
            rowv -= vec4(hi);
        }
        let xb = i32((p.inp.offset + n * p.inp.batch_stride) / 4u + q0 / 4u);
        let col_l = colv >= vec4(1);
        let col_r = colv < vec4(wi - 1);
        let ta = bq_row(xb + xo_a, last, r_a, dh_a, sc_a, sh_a, rowv, col_l, col_r);
        if (PX_TILE > 1u) {
            tb = bq_row(xb + xo_b, last, r_b, dh_b, sc_b, sh_b, rowv, col_l, col_r);
        }
        let x00 = ta.x0;
        let x01 = ta.x1;
        let x02 = ta.x2;
        let x10 = tb.x0;
        let x11 = tb.x1;
        let x12 = tb.x2;
        let yb = (p.out.offset + n * p.out.batch_stride) / 4u + q0 / 4u;
        let dy = bq_dy16(yb, co0, hw4, sl);
        let g0 = dy[0];
        bsum[0] += ones * g0;
        if (CH_TILE > 4u) { g1 = dy[1]; bsum[1] += ones * g1; }
        if (CH_TILE > 8u) { g2 = dy[2]; bsum[2] += ones * g2; }
        if (CH_TILE > 12u) { g3 = dy[3]; bsum[3] += ones * g3; }
        bq_mac(&acc, 0u, x00, g0, g1, g2, g3);
        bq_mac(&acc, 4u, x01, g0, g1, g2, g3);
        bq_mac(&acc, 8u, x02, g0, g1, g2, g3);
        if (PX_TILE > 1u) {
            bq_mac(&acc, 12u, x10, g0, g1, g2, g3);
            bq_mac(&acc, 16u, x11, g0, g1, g2, g3);
            bq_mac(&acc, 20u, x12, g0, g1, g2, g3);
        }
        q0 += 4u;
        colv += vec4(4);
        let wrap = colv >= vec4(wi);
        colv -= select(vec4(0), vec4(wi), wrap);
        rowv += select(vec4(0), vec4(1), wrap);
    }

    let base = chunk * p.part_stride;
    bq_store(acc[0], ka, 0u, 0u, co0, base, ncol);
    if (CH_TILE > 4u) { bq_store(acc[1], ka, 0u, 1u, co0, base, ncol); }
    if (CH_TILE > 8u) { bq_store(acc[2], ka, 0u, 2u, co0, base, ncol); }
    if (CH_TILE > 12u) { bq_store(acc[3], ka, 0u, 3u, co0, base, ncol); }
    bq_store(acc[4], ka, 1u, 0u, co0, base, ncol);
    if (CH_TILE > 4u) { bq_store(acc[5], ka, 1u, 1u, co0, base, ncol); }
    if (CH_TILE > 8u) { bq_store(acc[6], ka, 1u, 2u, co0, base, ncol); }
    if (CH_TILE > 12u) { bq_store(acc[7], ka, 1u, 3u, co0, base, ncol); }
    bq_store(acc[8], ka, 2u, 0u, co0, base, ncol);
    if (CH_TILE > 4u) { bq_store(acc[9], ka, 2u, 1u, co0, base, ncol); }
    if (CH_TILE > 8u) { bq_store(acc[10], ka, 2u, 2u, co0, base, ncol); }
    if (CH_TILE > 12u) { bq_store(acc[11], ka, 2u, 3u, co0, base, ncol); }
    if (PX_TILE > 1u) { bq_store(acc[12], kb, 0u, 0u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 4u) { bq_store(acc[13], kb, 0u, 1u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 8u) { bq_store(acc[14], kb, 0u, 2u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 12u) { bq_store(acc[15], kb, 0u, 3u, co0, base, ncol); }
    if (PX_TILE > 1u) { bq_store(acc[16], kb, 1u, 0u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 4u) { bq_store(acc[17], kb, 1u, 1u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 8u) { bq_store(acc[18], kb, 1u, 2u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 12u) { bq_store(acc[19], kb, 1u, 3u, co0, base, ncol); }
    if (PX_TILE > 1u) { bq_store(acc[20], kb, 2u, 0u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 4u) { bq_store(acc[21], kb, 2u, 1u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 8u) { bq_store(acc[22], kb, 2u, 2u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 12u) { bq_store(acc[23], kb, 2u, 3u, co0, base, ncol); }
    if (wg.x == 0u && li == 0u) {
        for (var cb = 0u; cb < 4u; cb++) {
            var v = bsum[cb];
            for (var c = 0u; c < 4u; c++) {
                let co = co0 + 4u * cb + c;
                if (co < p.cout && 4u * cb + c < CH_TILE) {
                    bq_part[base + p.cout * ncol + co] = v[c];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// pack_weight (for conv1x1 / conv3x3): wp[(rc * KK + t) * OCP + oc] = w[oc, rc, tap t] with
// OCP = out_c rounded up to a multiple of 4 (the extra channels are 0), the tap rotated by
// 180 degrees when p.flip (backward_data). The weights of 4 consecutive output channels are
// then one aligned vec4: lavapipe pays per load instruction, uniform or not, so one vec4 load
// replaces 4 scalar ones.
@group(0) @binding(1) var<storage, read> pw_w: array<f32>;          // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(2) var<storage, read_write> pw_out: array<f32>;  // (red_c * KH*KW, OCP)

@compute @workgroup_size(WG)
fn pack_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    let kk = p.kh * p.kw;
    let ocp = (p.out_c + 3u) / 4u * 4u;
    let rt = e / ocp;
    let oc = e - rt * ocp;
    let rc = rt / kk;
    let t = rt - rc * kk;
    var v = 0.0;
    if (oc < p.out_c) {
        let tap = select(t, kk - 1u - t, p.flip != 0u);
        v = pw_w[p.w_off + oc * p.w_out_stride + rc * p.w_red_stride + tap];
    }
    pw_out[e] = v;
}

// ---------------------------------------------------------------------------------------
// backward_weight_dot: 1x1, stride 1, no padding, vec4 layout, straight from NCHW x and
// d_y (no pixel-major copies). Partial sums over one chunk of pixel groups of 4
// (workgroup_id.z), layout as backward_weight_partial (columns = input channels):
//   part[chunk, co * Cin + ci] = sum_{n,q} d_y[n,co,q] * x'[n,ci,q]
//   part[chunk, Cout * Cin + co] = sum_{n,q} d_y[n,co,q]
// One invocation owns 8 input channels (lane l: ci 8 l' .. 8 l' + 7, l' = workgroup_id.x *
// WG + l) x the CH_TILE output channels of workgroup_id.y. Per pixel group it loads the 8
// x' vec4s along pixels and the tile's d_y through bq_dy16 (so the subgroup variant shares
// those loads), and adds x_j * G_cb (4 dot products over the 4 pixels) to acc[4 j + cb]:
// 512 multiply-adds per 8 + (2 or 16) loads. Binds like backward_weight_rows.
alias DotTile = array<vec4<f32>, 32>;

// acc[4 j + cb] += x * G_cb for the tile's channel blocks.
fn bd_mac(acc: ptr<function, DotTile>, j: u32, x: vec4<f32>, dy: Dy16) {
    (*acc)[4u * j] += x * dy[0];
    if (CH_TILE > 4u) { (*acc)[4u * j + 1u] += x * dy[1]; }
    if (CH_TILE > 8u) { (*acc)[4u * j + 2u] += x * dy[2]; }
    if (CH_TILE > 12u) { (*acc)[4u * j + 3u] += x * dy[3]; }
}

// x' of input channel ci0 + j at vec4 index xb (+ channel * hw4), or 0 past Cin.
fn bd_x(xb: u32, ci0: u32, j: u32, hw4: u32, sc: vec4<f32>, sh: vec4<f32>) -> vec4<f32> {
    let ci = min(ci0 + j, p.cin - 1u);
    var v = bq_x[xb + ci * hw4];
    if (PROLOGUE) { v = max(fma(v, sc, sh), vec4(0.0)); }
    return v;
}

// Writes acc[4 j + cb]: d_w of input channel ci0 + j for channels co0 + 4 cb .. + 3.
fn bd_store(a: vec4<f32>, ci: u32, cb: u32, co0: u32, base: u32) {
    if (ci >= p.cin) { return; }
    var v = a;
    for (var c = 0u; c < 4u; c++) {
        let co = co0 + 4u * cb + c;
        if (co >= p.cout || 4u * cb + c >= CH_TILE) { return; }
        bq_part[base + co * p.cin + ci] = v[c];
    }
}

// The body of the backward_weight_dot entry points (`sl` as in c1_body).
fn bd_body(wg: vec3<u32>, li: u32, sl: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let ngrp = p.n * hw4;
    let co0 = wg.y * CH_TILE;
    let ci0 = (wg.x * WG + li) * 8u;
    let chunk = wg.z;
    let g_begin = chunk * p.chunk_len;
    let g_end = min(g_begin + p.chunk_len, ngrp);
    // Per-channel prologue coefficients of the lane's 8 input channels.
    var sc: array<vec4<f32>, 8>;
    var sh: array<vec4<f32>, 8>;
    if (PROLOGUE) {
        for (var j = 0u; j < 8u; j++) {
            let ci = min(ci0 + j, p.cin - 1u);
            sc[j] = vec4(bq_scale[p.sc_off + ci]);
            sh[j] = vec4(bq_shift[p.sh_off + ci]);
        }
    }
    var acc: DotTile;
    var bsum: array<vec4<f32>, 4>;
    let ones = vec4(1.0);
    var n = g_begin / hw4;
    var q = g_begin - n * hw4;
    for (var g = g_begin; g < g_end; g++) {
        if (q == hw4) {
            q = 0u;
            n += 1u;
        }
        let xb = (p.inp.offset + n * p.inp.batch_stride) / 4u + q;
        let yb = (p.out.offset + n * p.out.batch_stride) / 4u + q;
        let dy = bq_dy16(yb, co0, hw4, sl);
        bsum[0] += ones * dy[0];
        if (CH_TILE > 4u) { bsum[1] += ones * dy[1]; }
        if (CH_TILE > 8u) { bsum[2] += ones * dy[2]; }
        if (CH_TILE > 12u) { bsum[3] += ones * dy[3]; }
        bd_mac(&acc, 0u, bd_x(xb, ci0, 0u, hw4, sc[0], sh[0]), dy);
        bd_mac(&acc, 1u, bd_x(xb, ci0, 1u, hw4, sc[1], sh[1]), dy);
        bd_mac(&acc, 2u, bd_x(xb, ci0, 2u, hw4, sc[2], sh[2]), dy);
        bd_mac(&acc, 3u, bd_x(xb, ci0, 3u, hw4, sc[3], sh[3]), dy);
        bd_mac(&acc, 4u, bd_x(xb, ci0, 4u, hw4, sc[4], sh[4]), dy);
        bd_mac(&acc, 5u, bd_x(xb, ci0, 5u, hw4, sc[5], sh[5]), dy);
        bd_mac(&acc, 6u, bd_x(xb, ci0, 6u, hw4, sc[6], sh[6]), dy);
        bd_mac(&acc, 7u, bd_x(xb, ci0, 7u, hw4, sc[7], sh[7]), dy);
        q += 1u;
    }

    let base = chunk * p.part_stride;
    for (var j = 0u; j < 8u; j++) {
        bd_store(acc[4u * j], ci0 + j, 0u, co0, base);
        if (CH_TILE > 4u) { bd_store(acc[4u * j + 1u], ci0 + j, 1u, co0, base); }
        if (CH_TILE > 8u) { bd_store(acc[4u * j + 2u], ci0 + j, 2u, co0, base); }
        if (CH_TILE > 12u) { bd_store(acc[4u * j + 3u], ci0 + j, 3u, co0, base); }
    }
    if (wg.x == 0u && li == 0u) {
        for (var cb = 0u; cb < 4u; cb++) {
            for (var c = 0u; c < 4u; c++) {
                let co = co0 + 4u * cb + c;
                if (co < p.cout && 4u * cb + c < CH_TILE) {
                    bq_part[base + p.cout * p.cin + co] = dot(bsum[cb], vec4(f32(c == 0u), f32(c == 1u), f32(c == 2u), f32(c == 3u)));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// repad: copies channel planes between plane sizes, so that convolutions whose H*W is not a
// multiple of 4 can run the vec4 kernels on zero-padded copies:
//   out[n, c, e] (+)= (e < P_in ? inp[n, c, e] : 0)   for e < P_out
// p.cin = C, p.h = P_in, p.w = P_out (floats per channel plane), p.total = N * C * P_out,
// p.accumulate: add instead of overwrite. One invocation per output element.
@group(0) @binding(1) var<storage, read> rp_in: array<f32>;           // (N, C, P_in) via p.inp
@group(0) @binding(2) var<storage, read_write> rp_out: array<f32>;    // (N, C, P_out) via p.out

@compute @workgroup_size(WG)
fn repad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    let plane = e / p.w;
    let q = e - plane * p.w;
    let n = plane / p.cin;
    let c = plane - n * p.cin;
    var v = 0.0;
    if (q < p.h) {
        v = rp_in[p.inp.offset + n * p.inp.batch_stride + c * p.h + q];
    }
    let o = p.out.offset + n * p.out.batch_stride + c * p.w + q;
    if (p.accumulate != 0u) {
        rp_out[o] += v;
    } else {
        rp_out[o] = v;
    }
}

// ---------------------------------------------------------------------------------------
// to_pixel_major (backward_weight_strided's d_y): out[(n*H*W + q) * CP + c] = inp[n, c, q]
// with CP = C rounded up to 4 (extra channels 0).
// One invocation per (pixel group of 4, channel block of 4): 4 vec4 loads, a 4 x 4
// transpose, 4 vec4 stores. p.red_c = C, p.total = N*H*W/4 * CP/4.
@group(0) @binding(1) var<storage, read> tp_in: array<vec4<f32>>;        // (N, C, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read_write> tp_out: array<vec4<f32>>; // (N*H*W, CP)

@compute @workgroup_size(WG)
fn to_pixel_major(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    let cp4 = (p.red_c + 3u) / 4u;
    let hw4 = (p.h * p.w) / 4u;
    let g = e / cp4;
    let cb = e - g * cp4;
    let n = g / hw4;
    let base = (p.inp.offset + n * p.inp.batch_stride) / 4u + (g - n * hw4);
    var m = mat4x4<f32>();   // column c: channel 4 cb + c at the 4 pixels
    for (var c = 0u; c < 4u; c++) {
        let ch = 4u * cb + c;
        if (ch < p.red_c) {
            m[c] = tp_in[base + ch * hw4];
        }
    }
    let t = transpose(m);   // column r: the 4 channels at pixel 4 g + r
    for (var r = 0u; r < 4u; r++) {
        tp_out[(4u * g + r) * cp4 + cb] = t[r];
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_strided: any kernel / stride / padding, d_y in pixel-major form
// (to_pixel_major; needs OH*OW % 4 == 0 and an aligned d_y). Partial sums over one chunk of
// output pixels k = (n, oh, ow) (workgroup_id.z), layout as backward_weight_partial:
//   part[chunk, co * ncol + col] = sum_k dyt[k, co] * x'[n, ci, oh*s-p+kh, ow*s-p+kw],
//   col = (ci, kh, kw);  part[chunk, Cout * ncol + co] = sum_k dyt[k, co]
// One invocation owns CH_TILE output channels (workgroup-uniform vec4 loads of dyt, shared
// through subgroup shuffles in backward_weight_strided_sg) x PXV blocks of 4 consecutive
// columns (lane l: blocks l, l + WG): per pixel 4 * PXV per-lane gathers of x, in conv1x1's
// 4 x 4 register blocks.
@group(0) @binding(1) var<storage, read> bs_dy: array<vec4<f32>>;         // (N*OH*OW, COP) pixel-major d_y
@group(0) @binding(2) var<storage, read> bs_x: array<f32>;                // (N, Cin, H, W) via p.inp
@group(0) @binding(3) var<storage, read> bs_scale: array<f32>;            // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> bs_shift: array<f32>;            // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> bs_part: array<f32>;       // (chunks, Cout*ncol + Cout)

fn bs_store(blk: mat4x4<f32>, co: u32, gi: u32, base: u32, ncol: u32) {
    var b = blk;
    for (var c = 0u; c < 4u; c++) {
        if (co + c >= p.cout) { return; }
        for (var r = 0u; r < 4u; r++) {
            let k = 4u * gi + r;
            if (k < ncol) {
                bs_part[base + (co + c) * ncol + k] = b[c][r];
            }
        }
    }
}

// Geometry of the 4 columns 4 gi .. 4 gi + 3 (clamped): (kh - pad, kw - pad, ci * H*W).
struct Cols {
    dh: vec4<i32>,
    dw: vec4<i32>,
    xc: vec4<u32>,
    sc: vec4<f32>,
    sh: vec4<f32>,
}
fn bs_cols(gi: u32, ncol: u32) -> Cols {
    let kk = p.kh * p.kw;
    let k = min(vec4(4u * gi) + vec4(0u, 1u, 2u, 3u), vec4(ncol - 1u));
    let ci = k / kk;
    let t = k - ci * kk;
    let kh = t / p.kw;
    let kw = t - kh * p.kw;
    var c: Cols;
    c.dh = vec4<i32>(kh) - vec4(i32(p.pad));
    c.dw = vec4<i32>(kw) - vec4(i32(p.pad));
    c.xc = ci * (p.h * p.w);
    c.sc = vec4(1.0);
    c.sh = vec4(0.0);
    if (PROLOGUE) {
        c.sc = vec4(bs_scale[p.sc_off + ci.x], bs_scale[p.sc_off + ci.y],
                    bs_scale[p.sc_off + ci.z], bs_scale[p.sc_off + ci.w]);
        c.sh = vec4(bs_shift[p.sh_off + ci.x], bs_shift[p.sh_off + ci.y],
                    bs_shift[p.sh_off + ci.z], bs_shift[p.sh_off + ci.w]);
    }
    return c;
}
// x' at the 4 columns for the input position (ih0, iw0) = (oh*s, ow*s) of image base xn.
fn bs_x4(c: Cols, xn: u32, ih0: i32, iw0: i32) -> vec4<f32> {
    let ih = vec4(ih0) + c.dh;
    let iw = vec4(iw0) + c.dw;
    let ok = (ih >= vec4(0)) & (ih < vec4(i32(p.h))) & (iw >= vec4(0)) & (iw < vec4(i32(p.w)));
    let idx = select(vec4(xn), vec4(xn) + c.xc + vec4<u32>(ih) * p.w + vec4<u32>(iw), ok);
    var v = vec4(bs_x[idx.x], bs_x[idx.y], bs_x[idx.z], bs_x[idx.w]);
    if (PROLOGUE) {
        v = max(fma(v, c.sc, c.sh), vec4(0.0));
    }
    return select(vec4(0.0), v, ok);
}

// d_y (pixel-major) at output pixel k for the tile's 4 channel blocks os (vec4 indices), in
// conv1x1's W4 (one vec4 per block of 4 output channels).
fn bs_load_dy(k: u32, cop4: u32, os: vec4<u32>) -> W4 {
    let yr = k * cop4;
    var d = W4(bs_dy[yr + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) { d.w1 = bs_dy[yr + os.y]; }
    if (CH_TILE > 8u) { d.w2 = bs_dy[yr + os.z]; }
    if (CH_TILE > 12u) { d.w3 = bs_dy[yr + os.w]; }
    return d;
}

// One output pixel at pos = (ow, oh, n): sums += d_y, acc += d_y (x) x' at the lane's columns.
fn bs_pixel(acc: ptr<function, Tile8>, sums: ptr<function, mat4x4<f32>>, dy: W4, ca: Cols,
            cb: Cols, pos: vec3<u32>) {
    (*sums)[0] += dy.w0;
    if (CH_TILE > 4u) { (*sums)[1] += dy.w1; }
    if (CH_TILE > 8u) { (*sums)[2] += dy.w2; }
    if (CH_TILE > 12u) { (*sums)[3] += dy.w3; }
    let xn = p.inp.offset + pos.z * p.inp.batch_stride;
    let ih0 = i32(pos.y * p.stride);
    let iw0 = i32(pos.x * p.stride);
    let x0 = bs_x4(ca, xn, ih0, iw0);
    var x1 = vec4(0.0);
    if (PXV > 1u) { x1 = bs_x4(cb, xn, ih0, iw0); }
    mac_tile(acc, dy.w0, dy.w1, dy.w2, dy.w3, x0, x1);
}

// The position after q in a 3-level count: x runs to lim.x, then y to lim.y, then z.
fn count_next(q: vec3<u32>, lim: vec2<u32>) -> vec3<u32> {
    var r = q;
    r.x += 1u;
    if (r.x == lim.x) {
        r.x = 0u;
        r.y += 1u;
        if (r.y == lim.y) {
            r.y = 0u;
            r.z += 1u;
        }
    }
    return r;
}

// The body of the backward_weight_strided entry points (`sl` as in c1_body). d_y at pixel k
// comes from bs_dy_at (conv2d_uniform_loads.wgsl or conv2d_subgroup.wgsl) for the pixels of
// the chunk below its last multiple of 8, and is loaded directly for the rest: two loops, so
// the loop body has no branch on which case applies.
fn bs_body(wg: vec3<u32>, li: u32, sl: u32) {
    let ohw = p.oh * p.ow;
    let npix = p.n * ohw;
    let ncol = p.cin * p.kh * p.kw;
    let cop4 = (p.cout + 3u) / 4u;
    let co0 = wg.y * CH_TILE;
    let os = min(vec4(co0 / 4u) + vec4(0u, 1u, 2u, 3u), vec4(cop4 - 1u));
    let ga = wg.x * (WG * PXV) + li;
    let gb = ga + WG;
    let ca = bs_cols(ga, ncol);
    let cb = bs_cols(gb, ncol);
    let chunk = wg.z;
    let k_begin = chunk * p.chunk_len;
    let k_end = min(k_begin + p.chunk_len, npix);

    var acc: Tile8;
    var sums: mat4x4<f32>;
    if (k_begin < k_end) {
        let n0 = k_begin / ohw;
        let r0 = k_begin - n0 * ohw;
        let oh0 = r0 / p.ow;
        var pos = vec3(r0 - oh0 * p.ow, oh0, n0);
        let k8 = k_begin + (k_end - k_begin) / 8u * 8u;
        var l: W4;
        for (var k = k_begin; k < k8; k++) {
            bs_pixel(&acc, &sums, bs_dy_at(&l, k, k_begin, cop4, os, sl), ca, cb, pos);
            pos = count_next(pos, vec2(p.ow, p.oh));
        }
        for (var k = k8; k < k_end; k++) {
            bs_pixel(&acc, &sums, bs_load_dy(k, cop4, os), ca, cb, pos);
            pos = count_next(pos, vec2(p.ow, p.oh));
        }
    }

    let base = chunk * p.part_stride;
    bs_store(acc[0], co0 + 0u, ga, base, ncol);
    if (CH_TILE > 4u) { bs_store(acc[2], co0 + 4u, ga, base, ncol); }
    if (CH_TILE > 8u) { bs_store(acc[4], co0 + 8u, ga, base, ncol); }
    if (CH_TILE > 12u) { bs_store(acc[6], co0 + 12u, ga, base, ncol); }
    if (PXV > 1u) { bs_store(acc[1], co0 + 0u, gb, base, ncol); }
    if (PXV > 1u && CH_TILE > 4u) { bs_store(acc[3], co0 + 4u, gb, base, ncol); }
    if (PXV > 1u && CH_TILE > 8u) { bs_store(acc[5], co0 + 8u, gb, base, ncol); }
    if (PXV > 1u && CH_TILE > 12u) { bs_store(acc[7], co0 + 12u, gb, base, ncol); }
    if (wg.x == 0u && li == 0u) {
        for (var i = 0u; i < CH_TILE; i++) {
            let co = co0 + i;
            if (co < p.cout) {
                bs_part[base + p.cout * ncol + co] = sums[i / 4u][i % 4u];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// forward_tiled: any kernel / stride / padding (the general forward, e.g. the 7x7/s2 stem).
// One invocation owns CH_TILE output channels (4 .. 16, from workgroup_id.y; packed weights,
// one workgroup-uniform vec4 per 4 channels, shared through subgroup shuffles in
// forward_tiled_sg) x PXV blocks of 4 consecutive flat output pixels (lane l: blocks l,
// l + WG), in conv1x1's 4 x 4 register blocks; per (kh, kw, ci) it gathers x at its
// 4 * PXV pixels.
@group(0) @binding(1) var<storage, read> ft_x: array<f32>;                // (N, Cin, H, W) via p.inp
// binding 2: the packed weights (Cin * KH*KW, OCP), read through conv1x1's c1_w (c1_load).
@group(0) @binding(3) var<storage, read> ft_b: array<f32>;                // (Cout) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> ft_scale: array<f32>;            // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> ft_shift: array<f32>;            // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> ft_y: array<f32>;          // (N, Cout, OH, OW) via p.out

// Geometry of the 4 output pixels 4 g .. 4 g + 3 (clamped): top-left input position and
// the index of x[n, 0, 0, 0].
struct Pix {
    ih0: vec4<i32>,
    iw0: vec4<i32>,
    xb: vec4<u32>,
}
fn ft_pix(g: u32) -> Pix {
    let ohw = p.oh * p.ow;
    let q = min(vec4(4u * g) + vec4(0u, 1u, 2u, 3u), vec4(p.n * ohw - 1u));
    let n = q / ohw;
    let r = q - n * ohw;
    let oh = r / p.ow;
    let ow = r - oh * p.ow;
    return Pix(vec4<i32>(oh * p.stride) - vec4(i32(p.pad)),
               vec4<i32>(ow * p.stride) - vec4(i32(p.pad)),
               vec4(p.inp.offset) + n * p.inp.batch_stride);
}
fn ft_store(blk: mat4x4<f32>, co: u32, g: u32) {
    let ohw = p.oh * p.ow;
    var b = blk;
    for (var r = 0u; r < 4u; r++) {
        let q = 4u * g + r;
        if (q >= p.n * ohw) { return; }
        let n = q / ohw;
        let yb = p.out.offset + n * p.out.batch_stride + (q - n * ohw);
        for (var c = 0u; c < 4u; c++) {
            if (co + c >= p.cout) { break; }
            var v = b[c][r];
            if (p.has_bias != 0u) {
                v += ft_b[p.b_off + co + c];
            }
            ft_y[yb + (co + c) * ohw] = v;
        }
    }
}

// Packed weight row of reduction step r = t * Cin + ci (tap t = kh * KW + kw): the steps
// run tap by tap, input channels innermost.
fn ft_row(r: u32) -> u32 {
    let t = r / p.cin;
    return (r - t * p.cin) * (p.kh * p.kw) + t;
}

// Reduction step (kh, kw, ci): acc += w (x) x' at the lane's 4 * PXV output pixels.
fn ft_step(acc: ptr<function, Tile8>, w: W4, kh: u32, kw: u32, ci: u32, pa: Pix, pb: Pix) {
    let co = ci * p.h * p.w;
    let iha = pa.ih0 + vec4(i32(kh));
    let iwa = pa.iw0 + vec4(i32(kw));
    let oka = (iha >= vec4(0)) & (iha < vec4(i32(p.h))) & (iwa >= vec4(0)) & (iwa < vec4(i32(p.w)));
    let ia = select(pa.xb, pa.xb + vec4<u32>(iha) * p.w + vec4<u32>(iwa), oka) + co;
    var xa = vec4(ft_x[ia.x], ft_x[ia.y], ft_x[ia.z], ft_x[ia.w]);
    var xb = vec4(0.0);
    var okb = vec4(false);
    if (PXV > 1u) {
        let ihb = pb.ih0 + vec4(i32(kh));
        let iwb = pb.iw0 + vec4(i32(kw));
        okb = (ihb >= vec4(0)) & (ihb < vec4(i32(p.h))) & (iwb >= vec4(0)) & (iwb < vec4(i32(p.w)));
        let ib = select(pb.xb, pb.xb + vec4<u32>(ihb) * p.w + vec4<u32>(iwb), okb) + co;
        xb = vec4(ft_x[ib.x], ft_x[ib.y], ft_x[ib.z], ft_x[ib.w]);
    }
    if (PROLOGUE) {
        let sc = vec4(ft_scale[p.sc_off + ci]);
        let sh = vec4(ft_shift[p.sh_off + ci]);
        xa = max(fma(xa, sc, sh), vec4(0.0));
        xb = max(fma(xb, sc, sh), vec4(0.0));
    }
    xa = select(vec4(0.0), xa, oka);
    xb = select(vec4(0.0), xb, okb);
    mac_tile(acc, w.w0, w.w1, w.w2, w.w3, xa, xb);
}

// The body of the forward_tiled entry points (`sl` as in c1_body). The weights of step r
// come from ft_weights (conv2d_uniform_loads.wgsl or conv2d_subgroup.wgsl) for the steps
// below the last multiple of 8 and are loaded directly for the rest.
fn ft_body(wg: vec3<u32>, nwg: vec3<u32>, li: u32, sl: u32) {
    let qa = block_id(wg, nwg) * (WG * PXV) + li;
    let qb = qa + WG;
    let pa = ft_pix(qa);
    let pb = ft_pix(qb);
    let oc0 = tile_id(wg) * CH_TILE;
    let os = vec4(w_block(oc0, 0u), w_block(oc0, 1u), w_block(oc0, 2u), w_block(oc0, 3u));
    let ocp4 = (p.cout + 3u) / 4u;
    let steps = p.kh * p.kw * p.cin;
    let r8 = steps / 8u * 8u;
    var acc: Tile8;
    var l: W4;
    var s = vec3(0u); // (ci, kw, kh) of step r
    for (var r = 0u; r < r8; r++) {
        ft_step(&acc, ft_weights(&l, r, ocp4, os, sl), s.z, s.y, s.x, pa, pb);
        s = count_next(s, vec2(p.cin, p.kw));
    }
    for (var r = r8; r < steps; r++) {
        ft_step(&acc, c1_load(ft_row(r), ocp4, os), s.z, s.y, s.x, pa, pb);
        s = count_next(s, vec2(p.cin, p.kw));
    }
    ft_store(acc[0], oc0 + 0u, qa);
    if (CH_TILE > 4u) { ft_store(acc[2], oc0 + 4u, qa); }
    if (CH_TILE > 8u) { ft_store(acc[4], oc0 + 8u, qa); }
    if (CH_TILE > 12u) { ft_store(acc[6], oc0 + 12u, qa); }
    if (PXV > 1u) { ft_store(acc[1], oc0 + 0u, qb); }
    if (PXV > 1u && CH_TILE > 4u) { ft_store(acc[3], oc0 + 4u, qb); }
    if (PXV > 1u && CH_TILE > 8u) { ft_store(acc[5], oc0 + 8u, qb); }
    if (PXV > 1u && CH_TILE > 12u) { ft_store(acc[7], oc0 + 12u, qb); }
}
