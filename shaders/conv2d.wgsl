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
    x: View,         // x (forward, backward_weight) or d_x (backward_data)
    y: View,         // y (forward) or d_y (backward)
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
}

@group(0) @binding(0) var<uniform> p: Params;

// Pixel-block index of a workgroup: the block axis is folded over (x, z) (see Gpu::grid_1d).
fn block_id(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.z * nwg.x;
}

// ---------------------------------------------------------------------------------------
// forward bindings
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;        // (N, Cin, H, W) via p.x
@group(0) @binding(2) var<storage, read> fwd_w: array<f32>;        // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(3) var<storage, read> fwd_b: array<f32>;        // (Cout) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> fwd_scale: array<f32>;    // (Cin) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> fwd_shift: array<f32>;    // (Cin) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> fwd_y: array<f32>;  // (N, Cout, OH, OW) via p.y

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
        xb[j] = p.x.offset + n * p.x.batch_stride;
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
        let yb = p.y.offset + n * p.y.batch_stride + r;
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
@group(0) @binding(1) var<storage, read> bd_d_y: array<f32>;       // (N, Cout, OH, OW) via p.y
@group(0) @binding(2) var<storage, read> bd_w: array<f32>;         // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(3) var<storage, read_write> bd_d_x: array<f32>; // (N, Cin, H, W) via p.x

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
        yb[j] = p.y.offset + n * p.y.batch_stride;
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
        let xb = p.x.offset + n * p.x.batch_stride + r;
        for (var i = 0u; i < CH_TILE; i++) {
            let ci = ci0 + i;
            if (ci >= p.cin) { continue; }
            bd_d_x[xb + ci * hw] += acc[i * PX_TILE + j];
        }
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_partial bindings
@group(0) @binding(1) var<storage, read> bw_d_y: array<f32>;       // (N, Cout, OH, OW) via p.y
@group(0) @binding(2) var<storage, read> bw_x: array<f32>;         // (N, Cin, H, W) via p.x
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
        xc[j] = p.x.offset + ci * hw;
        if (PROLOGUE) {
            sc[j] = bw_scale[p.sc_off + ci];
            sh[j] = bw_shift[p.sh_off + ci];
        }
    }
    var yc: array<u32, MAX_CH>;   // index of d_y[0, co, 0, 0] (clamped channel)
    for (var i = 0u; i < CH_TILE; i++) {
        yc[i] = p.y.offset + min(co0 + i, p.cout - 1u) * ohw;
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
            let xn = n * p.x.batch_stride;
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
            let yo = n * p.y.batch_stride + oh * p.ow + ow;
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
