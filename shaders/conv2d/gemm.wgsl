// conv2d as an implicit GEMM staged through workgroup memory (shaped for discrete GPUs):
//   gemm_forward:         y[n,co,q]    = b[co] + sum_k Wf[k, co] * X'[k, (n,q)]   k = (ci,kh,kw)
//   gemm_backward_data:   d_x[n,ci,q] += sum_k Wd[k, ci] * D[k, (n,q)]           k = (co,kh,kw)
//   gemm_backward_weight: part[z, co, j] = sum_{(n,q) in chunk z} d_y[n,co,q] * X'[(n,q), j]
//                         part[z, Cout*Cin*KH*KW + co] = sum_{(n,q) in chunk z} d_y[n,co,q]
//                                                                              j = (ci,kh,kw)
// with X'[(ci,kh,kw), (n,oh,ow)] = x'[n, ci, oh*s-p+kh, ow*s-p+kw] (0 outside the image),
// D[(co,kh,kw), (n,ih,iw)] = d_y[n, co, (ih+p-kh)/s, (iw+p-kw)/s] where that division is
// exact and in range (else 0), and Wf / Wd the weight packed K-major by pack_weight
// ([K, M rounded up to 4]): 4 output rows are one aligned vec4 load.
// Neither X' nor D is stored: they are gathered while staging.
//
// A workgroup computes a BM x BN tile of C (rows: output channels, columns: pixels, or
// weight columns for the weight gradient). Per step of BK along the reduction it stages a
// BK x BM slice of the left operand and a BK x BN slice of the right one in workgroup memory;
// each thread then accumulates a TM x TN register tile whose rows are tm + i*BM/TM and
// columns tn + j*BN/TN, so that neighbouring threads read neighbouring words.
// The weight gradient splits its reduction (the pixels) into chunks (workgroup_id.z);
// backward_weight_reduce (backward_weight.wgsl) adds the chunks' partial sums in a fixed order.

override BM: u32 = 64;
override BN: u32 = 64;
override BK: u32 = 16;
override TM: u32 = 4;
override TN: u32 = 4;
override THREADS: u32 = 256;  // (BM / TM) * (BN / TN)
override PROLOGUE: bool = false;
const MAX_T: u32 = 8u;         // TM, TN at most 8
const MAX_STAGE: u32 = 2048u;  // BM * BK and BN * BK at most

struct GemmParams {
    inp: View,        // the gathered activation: x (forward, weight gradient) or d_y (backward_data)
    out: View,        // y (forward), d_x (backward_data) or d_y (weight gradient, read)
    n: u32,           // the convolution's geometry, as in the register-tiled uniforms
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
    m: u32,           // rows of C: Cout (forward, weight gradient) or Cin (backward_data)
    m_pad: u32,       // row length of the packed weight: m rounded up to 4
    k: u32,           // reduction length: Cin*KH*KW, Cout*KH*KW, or N*OH*OW (weight gradient)
    cols: u32,        // columns of C: N*OH*OW, N*H*W, or Cin*KH*KW (weight gradient)
    has_bias: u32,
    b_off: u32,       // offset of the bias
    sc_off: u32,      // offset of the prologue scale
    sh_off: u32,      // offset of the prologue shift
    chunk_len: u32,   // weight gradient: pixels per chunk
    part_stride: u32, // weight gradient: floats per chunk (Cout*Cin*KH*KW + Cout)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> g: GemmParams;

var<workgroup> stage_a: array<f32, MAX_STAGE>;  // [BK][BM]
var<workgroup> stage_b: array<f32, MAX_STAGE>;  // [BK][BN]

// The output tile's rows start at workgroup_id.y * BM; its columns at the block folded over
// (x, z) (see Gpu::grid_1d).
fn col_block(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.z * nwg.x;
}

// x'[n, ci, ih, iw] (0 outside the image), `base` = the index of x[n, ci, 0, 0].
fn load_x(base: u32, ci: u32, ih: i32, iw: i32) -> f32 {
    if (ih < 0 || iw < 0 || u32(ih) >= g.h || u32(iw) >= g.w) { return 0.0; }
    let v = gm_in[base + u32(ih) * g.w + u32(iw)];
    if (PROLOGUE) {
        return max(gm_scale[g.sc_off + ci] * v + gm_shift[g.sh_off + ci], 0.0);
    }
    return v;
}

// The TM x TN register tile: acc[i * MAX_T + j] += a[i] * b[j] for one step of the
// staged reduction.
fn mac_staged(acc: ptr<function, array<f32, 64>>, kk: u32, tm: u32, tn: u32) {
    var a: array<f32, MAX_T>;
    var b: array<f32, MAX_T>;
    for (var i = 0u; i < TM; i++) { a[i] = stage_a[kk * BM + tm + i * (BM / TM)]; }
    for (var j = 0u; j < TN; j++) { b[j] = stage_b[kk * BN + tn + j * (BN / TN)]; }
    for (var i = 0u; i < TM; i++) {
        for (var j = 0u; j < TN; j++) {
            (*acc)[i * MAX_T + j] = fma(a[i], b[j], (*acc)[i * MAX_T + j]);
        }
    }
}

// One staged step: once every thread has staged its share, the register tile takes the
// BK products; the second barrier keeps the stage until every thread has read it.
fn multiply_stage(acc: ptr<function, array<f32, 64>>, tm: u32, tn: u32) {
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) { mac_staged(acc, kk, tm, tn); }
    workgroupBarrier();
}

// Stages BK rows of the packed weight (rows k0.., columns m0..m0+BM) as vec4 loads.
fn stage_weight(k0: u32, m0: u32, li: u32) {
    let quads = BM / 4u;
    for (var e = li; e < BK * quads; e += THREADS) {
        let kk = e / quads;
        let m = m0 + 4u * (e - kk * quads);
        var v = vec4(0.0);
        if (k0 + kk < g.k && m < g.m_pad) {
            v = gm_w[((k0 + kk) * g.m_pad + m) / 4u];
        }
        let s = kk * BM + 4u * (e - kk * quads);
        stage_a[s] = v.x;
        stage_a[s + 1u] = v.y;
        stage_a[s + 2u] = v.z;
        stage_a[s + 3u] = v.w;
    }
}

// ---------------------------------------------------------------------------------------
// gemm_forward and gemm_backward_data bindings (backward_data binds its packed weight in
// place of the bias and prologue vectors, which it does not read).
@group(0) @binding(1) var<storage, read> gm_in: array<f32>;         // x (N, Cin, H, W) or d_y (N, Cout, OH, OW) via g.inp
@group(0) @binding(2) var<storage, read> gm_w: array<vec4<f32>>;    // (K, M rounded up to 4), packed
@group(0) @binding(3) var<storage, read> gm_b: array<f32>;          // (Cout) at g.b_off
@group(0) @binding(4) var<storage, read> gm_scale: array<f32>;      // (Cin) at g.sc_off
@group(0) @binding(5) var<storage, read> gm_shift: array<f32>;      // (Cin) at g.sh_off
@group(0) @binding(6) var<storage, read_write> gm_out: array<f32>;  // y (N, Cout, OH, OW) or d_x (N, Cin, H, W) via g.out

@compute @workgroup_size(THREADS)
fn gemm_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * BM;
    let c0 = col_block(wg, nwg) * BN;
    let ohw = g.oh * g.ow;
    let hw = g.h * g.w;
    let kk_n = g.kh * g.kw;
    // This thread stages column c0 + li % BN of X' (the same pixel for every step).
    let sc = li % BN;
    let q = c0 + sc;
    let live = q < g.cols;
    let qc = min(q, g.cols - 1u);
    let n = qc / ohw;
    let r = qc - n * ohw;
    let oh = r / g.ow;
    let ow = r - oh * g.ow;
    let ih0 = i32(oh * g.stride) - i32(g.pad);
    let iw0 = i32(ow * g.stride) - i32(g.pad);
    let xbase = g.inp.offset + n * g.inp.batch_stride;
    let tm = li / (BN / TN);
    let tn = li - tm * (BN / TN);

    var acc: array<f32, 64>;
    for (var k0 = 0u; k0 < g.k; k0 += BK) {
        stage_weight(k0, m0, li);
        for (var kk = li / BN; kk < BK; kk += THREADS / BN) {
            let k = k0 + kk;
            var v = 0.0;
            if (live && k < g.k) {
                let ci = k / kk_n;
                let t = k - ci * kk_n;
                let dh = t / g.kw;
                v = load_x(xbase + ci * hw, ci, ih0 + i32(dh), iw0 + i32(t - dh * g.kw));
            }
            stage_b[kk * BN + sc] = v;
        }
        multiply_stage(&acc, tm, tn);
    }
    for (var j = 0u; j < TN; j++) {
        let qj = c0 + tn + j * (BN / TN);
        if (qj >= g.cols) { continue; }
        let nj = qj / ohw;
        let o = g.out.offset + nj * g.out.batch_stride + (qj - nj * ohw);
        for (var i = 0u; i < TM; i++) {
            let co = m0 + tm + i * (BM / TM);
            if (co >= g.m) { continue; }
            var v = acc[i * MAX_T + j];
            if (g.has_bias != 0u) { v += gm_b[g.b_off + co]; }
            gm_out[o + co * ohw] = v;
        }
    }
}

// ---------------------------------------------------------------------------------------

@compute @workgroup_size(THREADS)
fn gemm_backward_data(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * BM;
    let c0 = col_block(wg, nwg) * BN;
    let ohw = g.oh * g.ow;
    let hw = g.h * g.w;
    let kk_n = g.kh * g.kw;
    let s = i32(g.stride);
    let sc = li % BN;
    let q = c0 + sc;
    let live = q < g.cols;
    let qc = min(q, g.cols - 1u);
    let n = qc / hw;
    let r = qc - n * hw;
    let ih = r / g.w;
    let th0 = i32(ih + g.pad);
    let tw0 = i32(r - ih * g.w + g.pad);
    let ybase = g.inp.offset + n * g.inp.batch_stride;
    let tm = li / (BN / TN);
    let tn = li - tm * (BN / TN);

    var acc: array<f32, 64>;
    for (var k0 = 0u; k0 < g.k; k0 += BK) {
        stage_weight(k0, m0, li);
        for (var kk = li / BN; kk < BK; kk += THREADS / BN) {
            let k = k0 + kk;
            var v = 0.0;
            if (live && k < g.k) {
                let co = k / kk_n;
                let t = k - co * kk_n;
                let dh = t / g.kw;
                let th = th0 - i32(dh);
                let tw = tw0 - i32(t - dh * g.kw);
                let oh = th / s;
                let ow = tw / s;
                if (th >= 0 && tw >= 0 && oh * s == th && ow * s == tw
                    && u32(oh) < g.oh && u32(ow) < g.ow) {
                    v = gm_in[ybase + co * ohw + u32(oh) * g.ow + u32(ow)];
                }
            }
            stage_b[kk * BN + sc] = v;
        }
        multiply_stage(&acc, tm, tn);
    }
    for (var j = 0u; j < TN; j++) {
        let qj = c0 + tn + j * (BN / TN);
        if (qj >= g.cols) { continue; }
        let nj = qj / hw;
        let o = g.out.offset + nj * g.out.batch_stride + (qj - nj * hw);
        for (var i = 0u; i < TM; i++) {
            let ci = m0 + tm + i * (BM / TM);
            if (ci >= g.m) { continue; }
            gm_out[o + ci * hw] += acc[i * MAX_T + j];
        }
    }
}

// ---------------------------------------------------------------------------------------
// gemm_backward_weight bindings. Both operands are gathered with the pixel axis fastest
// across threads (kk = e % BK), so that neighbouring threads read neighbouring pixels.
@group(0) @binding(1) var<storage, read> gw_d_y: array<f32>;       // (N, Cout, OH, OW) via g.out
@group(0) @binding(2) var<storage, read> gw_x: array<f32>;         // (N, Cin, H, W) via g.inp
@group(0) @binding(3) var<storage, read> gw_scale: array<f32>;     // (Cin) at g.sc_off
@group(0) @binding(4) var<storage, read> gw_shift: array<f32>;     // (Cin) at g.sh_off
@group(0) @binding(5) var<storage, read_write> gw_part: array<f32>; // (chunks, part_stride)

fn load_x_w(ci: u32, base: u32, ih: i32, iw: i32) -> f32 {
    if (ih < 0 || iw < 0 || u32(ih) >= g.h || u32(iw) >= g.w) { return 0.0; }
    let v = gw_x[base + u32(ih) * g.w + u32(iw)];
    if (PROLOGUE) {
        return max(gw_scale[g.sc_off + ci] * v + gw_shift[g.sh_off + ci], 0.0);
    }
    return v;
}

@compute @workgroup_size(THREADS)
fn gemm_backward_weight(@builtin(workgroup_id) wg: vec3<u32>,
                        @builtin(local_invocation_index) li: u32) {
    let m0 = wg.y * BM;
    let c0 = wg.x * BN;
    let z = wg.z;
    let ohw = g.oh * g.ow;
    let hw = g.h * g.w;
    let kk_n = g.kh * g.kw;
    let p0 = z * g.chunk_len;
    let p_end = min(p0 + g.chunk_len, g.k);
    let tm = li / (BN / TN);
    let tn = li - tm * (BN / TN);
    // The bias gradient: column block 0 sums the staged d_y rows (thread li < BM: row li).
    let sums_bias = wg.x == 0u && li < BM;
    var bias = 0.0;

    var acc: array<f32, 64>;
    for (var k0 = p0; k0 < p_end; k0 += BK) {
        for (var e = li; e < BK * BM; e += THREADS) {
            let m = e / BK;
            let kk = e - m * BK;
            let pix = k0 + kk;
            var v = 0.0;
            if (pix < p_end && m0 + m < g.m) {
                let n = pix / ohw;
                v = gw_d_y[g.out.offset + n * g.out.batch_stride + (m0 + m) * ohw + (pix - n * ohw)];
            }
            stage_a[kk * BM + m] = v;
        }
        for (var e = li; e < BK * BN; e += THREADS) {
            let c = e / BK;
            let kk = e - c * BK;
            let pix = k0 + kk;
            let col = c0 + c;
            var v = 0.0;
            if (pix < p_end && col < g.cols) {
                let ci = col / kk_n;
                let t = col - ci * kk_n;
                let dh = t / g.kw;
                let n = pix / ohw;
                let r = pix - n * ohw;
                let oh = r / g.ow;
                let ow = r - oh * g.ow;
                let ih = i32(oh * g.stride) - i32(g.pad) + i32(dh);
                let iw = i32(ow * g.stride) - i32(g.pad) + i32(t - dh * g.kw);
                v = load_x_w(ci, g.inp.offset + n * g.inp.batch_stride + ci * hw, ih, iw);
            }
            stage_b[kk * BN + c] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) { mac_staged(&acc, kk, tm, tn); }
        if (sums_bias) {
            for (var kk = 0u; kk < BK; kk++) { bias += stage_a[kk * BM + li]; }
        }
        workgroupBarrier();
    }
    let part = z * g.part_stride;
    for (var i = 0u; i < TM; i++) {
        let co = m0 + tm + i * (BM / TM);
        if (co >= g.m) { continue; }
        for (var j = 0u; j < TN; j++) {
            let col = c0 + tn + j * (BN / TN);
            if (col < g.cols) { gw_part[part + co * g.cols + col] = acc[i * MAX_T + j]; }
        }
    }
    if (sums_bias && m0 + li < g.m) {
        gw_part[part + g.m * g.cols + m0 + li] = bias;
    }
}
