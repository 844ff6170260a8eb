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
// Register tiling, no shared memory, no barriers. Every invocation owns a CH_TILE x PX_TILE
// tile of outputs. The CH_TILE axis is a channel axis taken from workgroup_id.y, so its
// weight (forward / backward_data) or d_y (backward_weight) loads are workgroup-uniform;
// the PX_TILE axis varies per lane (lane l owns elements l, l + WG, ...).
//   forward:                 CH_TILE output channels x PX_TILE output pixels of (n, oh, ow)
//   backward_data:           CH_TILE input channels  x PX_TILE input pixels of (n, ih, iw)
//   backward_weight_partial: CH_TILE output channels x PX_TILE weight columns (ci, kh, kw),
//                            summed over one chunk of the (n, oh, ow) axis (workgroup_id.z);
//   backward_weight_reduce:  sums the chunks in fixed order and adds into d_w / d_b.

override WG: u32 = 64;
override CH_TILE: u32 = 8;
override PX_TILE: u32 = 2;
override PROLOGUE: bool = false;
const MAX_CH: u32 = 16u;
const MAX_PX: u32 = 8u;

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
    flip: u32,       // conv3x3: 1 = use the kernel rotated by 180 degrees (backward_data)
    accumulate: u32, // conv1x1 / conv3x3: 1 = out += sum (backward_data), 0 = out = sum + bias
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Pixel-block index of a workgroup: the block axis is folded over (x, z) (see Gpu::grid_1d).
fn block_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.z * nwg.x;
}

// ---------------------------------------------------------------------------------------
// forward bindings
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;        // (N, Cin, H, W) via p.inp
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;        // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(3) var<storage, read> fwd_b: array<f32>;        // (Cout) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> fwd_scale: array<f32>;    // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> fwd_shift: array<f32>;    // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> fwd_y: array<f32>;  // (N, Cout, OH, OW) via p.out

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let ohw = p.oh * p.ow;
    let npix = p.n * ohw;
    let hw = p.h * p.w;
    let kk = p.kh * p.kw;
    let wrow = p.cin * kk;
    let co0 = wg.y * CH_TILE;
    let q0 = block_id(wg, nwg) * (WG * PX_TILE) + li;

    // Per-pixel geometry (clamped pixels compute garbage that is never stored).
    var ih0: array<i32, MAX_PX>;
    var iw0: array<i32, MAX_PX>;
    var xb: array<u32, MAX_PX>;   // index of x[n, 0, 0, 0]
    for (var j = 0u; j < PX_TILE; j++) {
        let q = min(q0 + j * WG, npix - 1u);
        let n = q / ohw;
        let r = q - n * ohw;
        let oh = r / p.ow;
        let ow = r - oh * p.ow;
        ih0[j] = i32(oh * p.stride) - i32(p.pad);
        iw0[j] = i32(ow * p.stride) - i32(p.pad);
        xb[j] = p.inp.offset + n * p.inp.batch_stride;
    }
    // Weight row of each output channel (clamped for the remainder tile).
    var wb: array<u32, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        wb[i] = p.w_off + min(co0 + i, p.cout - 1u) * wrow;
    }

    var acc: array<f32, 128>;   // [i * PX_TILE + j], MAX_CH * MAX_PX
    for (var t = 0u; t < CH_TILE * PX_TILE; t++) {
        acc[t] = 0.0;
    }

    for (var kh = 0u; kh < p.kh; kh++) {
        for (var kw = 0u; kw < p.kw; kw++) {
            var ok: array<bool, MAX_PX>;
            var xi: array<u32, MAX_PX>;   // index of x[n, 0, ih, iw] (or a safe one)
            for (var j = 0u; j < PX_TILE; j++) {
                let ih = ih0[j] + i32(kh);
                let iw = iw0[j] + i32(kw);
                ok[j] = ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w);
                xi[j] = select(xb[j], xb[j] + u32(ih) * p.w + u32(iw), ok[j]);
            }
            let kof = kh * p.kw + kw;
            for (var ci = 0u; ci < p.cin; ci++) {
                var xv: array<f32, MAX_PX>;
                var sc = 1.0;
                var sh = 0.0;
                if (PROLOGUE) {
                    sc = fwd_scale[p.sc_off + ci];
                    sh = fwd_shift[p.sh_off + ci];
                }
                for (var j = 0u; j < PX_TILE; j++) {
                    var v = fwd_x[xi[j] + ci * hw];
                    if (PROLOGUE) {
                        v = max(fma(v, sc, sh), 0.0);
                    }
                    xv[j] = select(0.0, v, ok[j]);
                }
                let wo = ci * kk + kof;
                for (var i = 0u; i < CH_TILE; i++) {
                    let wv = fwd_w[wb[i] + wo];
                    for (var j = 0u; j < PX_TILE; j++) {
                        acc[i * PX_TILE + j] = fma(wv, xv[j], acc[i * PX_TILE + j]);
                    }
                }
            }
        }
    }

    for (var j = 0u; j < PX_TILE; j++) {
        let q = q0 + j * WG;
        if (q >= npix) { continue; }
        let n = q / ohw;
        let r = q - n * ohw;
        let yb = p.out.offset + n * p.out.batch_stride + r;
        for (var i = 0u; i < CH_TILE; i++) {
            let co = co0 + i;
            if (co >= p.cout) { continue; }
            var v = acc[i * PX_TILE + j];
            if (p.has_bias != 0u) {
                v += fwd_b[p.b_off + co];
            }
            fwd_y[yb + co * ohw] = v;
        }
    }
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
    let ci0 = wg.y * CH_TILE;
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

// Pixel group of a lane: returns (n, first flat pixel q0 of the group); clamped.
fn pixel_group(wg: vec3<u32>, nwg: vec3<u32>, li: u32, hw4: u32) -> vec2<u32> {
    let g = min(block_id(wg, nwg) * WG + li, p.n * hw4 - 1u);
    let n = g / hw4;
    return vec2(n, (g - n * hw4) * 4u);
}

// ---------------------------------------------------------------------------------------
// conv1x1: 1x1 kernel, stride 1, no padding: a GEMM over channels per pixel.
//   forward:       y[n,co,q]    = b[co] + sum_ci w[co,ci] * x'[n,ci,q]
//   backward_data: d_x[n,ci,q] += sum_co w[co,ci] * d_y[n,co,q]
@group(0) @binding(1) var<storage, read> c1_inp: array<vec4<f32>>;        // (N, red_c, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read> c1_w: array<f32>;                // (Cout, Cin) at p.w_off
@group(0) @binding(3) var<storage, read> c1_b: array<f32>;                // (out_c) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> c1_scale: array<f32>;            // (red_c) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> c1_shift: array<f32>;            // (red_c) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> c1_out: array<vec4<f32>>;  // (N, out_c, H*W/4) via p.out

@compute @workgroup_size(WG)
fn conv1x1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let nq = pixel_group(wg, nwg, li, hw4);
    let ib = (p.inp.offset + nq.x * p.inp.batch_stride) / 4u + nq.y / 4u;
    let oc0 = wg.y * CH_TILE;
    var wb: array<u32, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        wb[i] = p.w_off + min(oc0 + i, p.out_c - 1u) * p.w_out_stride;
    }
    var acc: array<vec4<f32>, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        acc[i] = vec4(0.0);
    }
    for (var rc = 0u; rc < p.red_c; rc++) {
        var v = c1_inp[ib + rc * hw4];
        if (PROLOGUE) {
            v = max(fma(v, vec4(c1_scale[p.sc_off + rc]), vec4(c1_shift[p.sh_off + rc])), vec4(0.0));
        }
        let wo = rc * p.w_red_stride;
        for (var i = 0u; i < CH_TILE; i++) {
            acc[i] = fma(vec4(c1_w[wb[i] + wo]), v, acc[i]);
        }
    }
    if (block_id(wg, nwg) * WG + li >= p.n * hw4) { return; }
    let ob = (p.out.offset + nq.x * p.out.batch_stride) / 4u + nq.y / 4u;
    for (var i = 0u; i < CH_TILE; i++) {
        let oc = oc0 + i;
        if (oc >= p.out_c) { continue; }
        let o = ob + oc * hw4;
        if (p.accumulate != 0u) {
            c1_out[o] += acc[i];
        } else if (p.has_bias != 0u) {
            c1_out[o] = acc[i] + vec4(c1_b[p.b_off + oc]);
        } else {
            c1_out[o] = acc[i];
        }
    }
}

// ---------------------------------------------------------------------------------------
// conv3x3: 3x3 kernel, stride 1, padding 1 (output size = input size).
//   forward:       y[n,co,h,w]    = b[co] + sum_{ci,i,j} w[co,ci,i,j]     * x'[n,ci,h+i-1,w+j-1]
//   backward_data: d_x[n,ci,h,w] += sum_{co,i,j} w[co,ci,2-i,2-j] * d_y[n,co,h+i-1,w+j-1]
// For tap row i the inputs of the 4 pixels q0..q0+3 at taps j = 0..2 are the flat elements
// q0 + (i-1)*W - 1 + [0, 6): three aligned vec4 loads cover them; the misalignment r is the
// same for every lane. Out-of-image taps (padding, row wrap) are masked to 0.
@group(0) @binding(1) var<storage, read> c3_inp: array<vec4<f32>>;        // (N, red_c, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read> c3_w: array<f32>;                // (Cout, Cin, 3, 3) at p.w_off
@group(0) @binding(3) var<storage, read> c3_b: array<f32>;                // (out_c) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> c3_scale: array<f32>;            // (red_c) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> c3_shift: array<f32>;            // (red_c) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> c3_out: array<vec4<f32>>;  // (N, out_c, H*W/4) via p.out

@compute @workgroup_size(WG)
fn conv3x3(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let nq = pixel_group(wg, nwg, li, hw4);
    let q0 = nq.y;
    let ib = i32((p.inp.offset + nq.x * p.inp.batch_stride) / 4u + q0 / 4u);
    let last = i32(arrayLength(&c3_inp)) - 1;
    let wi = i32(p.w);
    let hi = i32(p.h);
    let qv = vec4<u32>(q0, q0 + 1u, q0 + 2u, q0 + 3u);
    let rowv = vec4<i32>(qv / p.w);
    let colv = vec4<i32>(qv % p.w);
    let col_l = colv >= vec4(1);        // tap j = 0 reads column w - 1
    let col_r = colv < vec4(wi - 1);    // tap j = 2 reads column w + 1
    let flip = p.flip != 0u;

    let oc0 = wg.y * CH_TILE;
    var wb: array<u32, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        wb[i] = p.w_off + min(oc0 + i, p.out_c - 1u) * p.w_out_stride;
    }
    var acc: array<vec4<f32>, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        acc[i] = vec4(0.0);
    }

    for (var ti = 0u; ti < 3u; ti++) {
        let dh = i32(ti) - 1;
        let rv = rowv + vec4(dh);
        let row_ok = (rv >= vec4(0)) & (rv < vec4(hi));
        let m0 = row_ok & col_l;
        let m2 = row_ok & col_r;
        let shift = dh * wi - 1;          // window start relative to q0
        let g0 = ib + (shift >> 2u);      // floor(shift / 4)
        let r = u32(shift & 3);
        let kr = select(ti, 2u - ti, flip) * 3u;
        let t0 = kr + select(0u, 2u, flip);
        let t1 = kr + 1u;
        let t2 = kr + select(2u, 0u, flip);
        for (var rc = 0u; rc < p.red_c; rc++) {
            let gi = g0 + i32(rc * hw4);
            var a = c3_inp[u32(clamp(gi, 0, last))];
            var b = c3_inp[u32(clamp(gi + 1, 0, last))];
            var c = c3_inp[u32(clamp(gi + 2, 0, last))];
            if (PROLOGUE) {
                let sc = vec4(c3_scale[p.sc_off + rc]);
                let sh = vec4(c3_shift[p.sh_off + rc]);
                a = max(fma(a, sc, sh), vec4(0.0));
                b = max(fma(b, sc, sh), vec4(0.0));
                c = max(fma(c, sc, sh), vec4(0.0));
            }
            // s = window elements r .. r+3, u = r+4 .. r+7
            var s = a;
            var u = b;
            s = select(s, vec4(a.yzw, b.x), r == 1u);
            u = select(u, vec4(b.yzw, c.x), r == 1u);
            s = select(s, vec4(a.zw, b.xy), r == 2u);
            u = select(u, vec4(b.zw, c.xy), r == 2u);
            s = select(s, vec4(a.w, b.xyz), r == 3u);
            u = select(u, vec4(b.w, c.xyz), r == 3u);
            let x0 = select(vec4(0.0), s, m0);
            let x1 = select(vec4(0.0), vec4(s.yzw, u.x), row_ok);
            let x2 = select(vec4(0.0), vec4(s.zw, u.xy), m2);
            let wo = rc * p.w_red_stride;
            for (var i = 0u; i < CH_TILE; i++) {
                let o = wb[i] + wo;
                acc[i] = fma(vec4(c3_w[o + t0]), x0, acc[i]);
                acc[i] = fma(vec4(c3_w[o + t1]), x1, acc[i]);
                acc[i] = fma(vec4(c3_w[o + t2]), x2, acc[i]);
            }
        }
    }

    if (block_id(wg, nwg) * WG + li >= p.n * hw4) { return; }
    let ob = (p.out.offset + nq.x * p.out.batch_stride) / 4u + q0 / 4u;
    for (var i = 0u; i < CH_TILE; i++) {
        let oc = oc0 + i;
        if (oc >= p.out_c) { continue; }
        let o = ob + oc * hw4;
        if (p.accumulate != 0u) {
            c3_out[o] += acc[i];
        } else if (p.has_bias != 0u) {
            c3_out[o] = acc[i] + vec4(c3_b[p.b_off + oc]);
        } else {
            c3_out[o] = acc[i];
        }
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_partial_v4: stride 1, square kernel K = 2*pad + 1 (output size = input
// size). Column k = (ci, kh, kw) reads x at the flat shift d = (kh-pad)*W + (kw-pad), so a
// group of 4 pixels needs two aligned vec4 loads and a per-lane shuffle by d mod 4; the
// d_y loads of a pixel group are workgroup-uniform vec4s. Layout as backward_weight_partial,
// with p.chunk_len counted in pixel groups of 4.
@group(0) @binding(1) var<storage, read> bv_d_y: array<vec4<f32>>;        // (N, Cout, H*W/4) via p.out
@group(0) @binding(2) var<storage, read> bv_x: array<vec4<f32>>;          // (N, Cin, H*W/4) via p.inp
@group(0) @binding(3) var<storage, read> bv_scale: array<f32>;            // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> bv_shift: array<f32>;            // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> bv_part: array<f32>;       // (chunks, Cout*Cin*K*K + Cout)

@compute @workgroup_size(WG)
fn backward_weight_partial_v4(@builtin(workgroup_id) wg: vec3<u32>,
                              @builtin(local_invocation_index) li: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let ngrp = p.n * hw4;
    let kk = p.kh * p.kw;
    let ncol = p.cin * kk;
    let co0 = wg.y * CH_TILE;
    let k0 = wg.x * (WG * PX_TILE) + li;
    let chunk = wg.z;
    let g_begin = chunk * p.chunk_len;
    let g_end = min(g_begin + p.chunk_len, ngrp);
    let last = i32(arrayLength(&bv_x)) - 1;
    let wi = i32(p.w);
    let hi = i32(p.h);
    let wide = p.kh > 1u;

    var dh: array<i32, MAX_PX>;   // kh - pad
    var dw: array<i32, MAX_PX>;   // kw - pad
    var xo: array<i32, MAX_PX>;   // ci * H*W/4 + floor(d / 4)
    var rr: array<u32, MAX_PX>;   // d mod 4
    var sc: array<f32, MAX_PX>;
    var sh: array<f32, MAX_PX>;
    for (var j = 0u; j < PX_TILE; j++) {
        let k = min(k0 + j * WG, ncol - 1u);
        let ci = k / kk;
        let t = k - ci * kk;
        let kh = t / p.kw;
        let kw = t - kh * p.kw;
        dh[j] = i32(kh) - i32(p.pad);
        dw[j] = i32(kw) - i32(p.pad);
        let d = dh[j] * wi + dw[j];
        xo[j] = i32(ci * hw4) + (d >> 2u);
        rr[j] = u32(d & 3);
        if (PROLOGUE) {
            sc[j] = bv_scale[p.sc_off + ci];
            sh[j] = bv_shift[p.sh_off + ci];
        }
    }
    var yc: array<u32, MAX_CH>;
    for (var i = 0u; i < CH_TILE; i++) {
        yc[i] = min(co0 + i, p.cout - 1u) * hw4;
    }

    var acc: array<vec4<f32>, 16>;   // [i * PX_TILE + j], CH_TILE * PX_TILE <= 16
    var bacc: array<vec4<f32>, MAX_CH>;
    for (var t = 0u; t < CH_TILE * PX_TILE; t++) {
        acc[t] = vec4(0.0);
    }
    for (var i = 0u; i < CH_TILE; i++) {
        bacc[i] = vec4(0.0);
    }

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
        var xv: array<vec4<f32>, MAX_PX>;
        for (var j = 0u; j < PX_TILE; j++) {
            let gi = xb + xo[j];
            let a = bv_x[u32(clamp(gi, 0, last))];
            var v = a;
            if (wide) {
                let b = bv_x[u32(clamp(gi + 1, 0, last))];
                let r = rr[j];
                v = select(v, vec4(a.yzw, b.x), r == 1u);
                v = select(v, vec4(a.zw, b.xy), r == 2u);
                v = select(v, vec4(a.w, b.xyz), r == 3u);
            }
            if (PROLOGUE) {
                v = max(fma(v, vec4(sc[j]), vec4(sh[j])), vec4(0.0));
            }
            let rv = rowv + vec4(dh[j]);
            let cv = colv + vec4(dw[j]);
            let ok = (rv >= vec4(0)) & (rv < vec4(hi)) & (cv >= vec4(0)) & (cv < vec4(wi));
            xv[j] = select(vec4(0.0), v, ok);
        }
        let yb = (p.out.offset + n * p.out.batch_stride) / 4u + q0 / 4u;
        for (var i = 0u; i < CH_TILE; i++) {
            let gy = bv_d_y[yb + yc[i]];
            bacc[i] += gy;
            for (var j = 0u; j < PX_TILE; j++) {
                acc[i * PX_TILE + j] = fma(gy, xv[j], acc[i * PX_TILE + j]);
            }
        }
        q0 += 4u;
        colv += vec4(4);
        let wrap = colv >= vec4(wi);
        colv -= select(vec4(0), vec4(wi), wrap);
        rowv += select(vec4(0), vec4(1), wrap);
    }

    let base = chunk * p.part_stride;
    for (var i = 0u; i < CH_TILE; i++) {
        let co = co0 + i;
        if (co >= p.cout) { continue; }
        for (var j = 0u; j < PX_TILE; j++) {
            let k = k0 + j * WG;
            if (k < ncol) {
                let a = acc[i * PX_TILE + j];
                bv_part[base + co * ncol + k] = (a.x + a.y) + (a.z + a.w);
            }
        }
        if (wg.x == 0u && li == 0u) {
            let a = bacc[i];
            bv_part[base + p.cout * ncol + co] = (a.x + a.y) + (a.z + a.w);
        }
    }
}
