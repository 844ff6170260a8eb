// conv2d weight-gradient kernels: partial sums per chunk of pixels, and the fixed-order
// reduction over chunks; formulas in common.wgsl.

struct WeightParams {
    inp: View,         // x
    out: View,         // d_y
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
    sc_off: u32,       // offset of the prologue scale
    sh_off: u32,       // offset of the prologue shift
    chunk_len: u32,    // pixels (n, oh, ow), or groups of 4 of them, per chunk
    chunks: u32,
    part_stride: u32,  // floats per chunk in the scratch (Cout*Cin*KH*KW + Cout)
}

@group(0) @binding(0) var<uniform> weight_params: WeightParams;

// ---------------------------------------------------------------------------------------
// backward_weight_partial bindings
@group(0) @binding(1) var<storage, read> bw_d_y: array<f32>;       // (N, Cout, OH, OW) via weight_params.out
@group(0) @binding(2) var<storage, read> bw_x: array<f32>;         // (N, Cin, H, W) via weight_params.inp
@group(0) @binding(3) var<storage, read> bw_scale: array<f32>;     // (Cin) at weight_params.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> bw_shift: array<f32>;     // (Cin) at weight_params.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> bw_part: array<f32>; // (chunks, Cout*Cin*KH*KW + Cout)

@compute @workgroup_size(WG)
fn backward_weight_partial(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(local_invocation_index) li: u32) {
    let hw = weight_params.h * weight_params.w;
    let ohw = weight_params.oh * weight_params.ow;
    let npix = weight_params.n * ohw;
    let kk = weight_params.kh * weight_params.kw;
    let ncol = weight_params.cin * kk;
    let co0 = wg.y * CH_TILE;
    let k0 = wg.x * (WG * PX_TILE) + li;
    let chunk = wg.z;
    let q_begin = chunk * weight_params.chunk_len;
    let q_end = min(q_begin + weight_params.chunk_len, npix);

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
        let kh = r / weight_params.kw;
        let kw = r - kh * weight_params.kw;
        dh[j] = i32(kh) - i32(weight_params.pad);
        dw[j] = i32(kw) - i32(weight_params.pad);
        xc[j] = weight_params.inp.offset + ci * hw;
        if (PROLOGUE) {
            sc[j] = bw_scale[weight_params.sc_off + ci];
            sh[j] = bw_shift[weight_params.sh_off + ci];
        }
    }
    var yc: array<u32, MAX_CH>;   // index of d_y[0, co, 0, 0] (clamped channel)
    for (var i = 0u; i < CH_TILE; i++) {
        yc[i] = weight_params.out.offset + min(co0 + i, weight_params.cout - 1u) * ohw;
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
        var oh = r0 / weight_params.ow;
        var ow = r0 - oh * weight_params.ow;
        for (var q = q_begin; q < q_end; q++) {
            let ih0 = i32(oh * weight_params.stride);
            let iw0 = i32(ow * weight_params.stride);
            let xn = n * weight_params.inp.batch_stride;
            var xv: array<f32, MAX_PX>;
            for (var j = 0u; j < PX_TILE; j++) {
                let ih = ih0 + dh[j];
                let iw = iw0 + dw[j];
                let ok = ih >= 0 && ih < i32(weight_params.h) && iw >= 0 && iw < i32(weight_params.w);
                var v = bw_x[select(xc[j], xc[j] + xn + u32(ih) * weight_params.w + u32(iw), ok)];
                if (PROLOGUE) {
                    v = max(fma(v, sc[j], sh[j]), 0.0);
                }
                xv[j] = select(0.0, v, ok);
            }
            let yo = n * weight_params.out.batch_stride + oh * weight_params.ow + ow;
            for (var i = 0u; i < CH_TILE; i++) {
                let g = bw_d_y[yc[i] + yo];
                bacc[i] += g;
                for (var j = 0u; j < PX_TILE; j++) {
                    acc[i * PX_TILE + j] = fma(g, xv[j], acc[i * PX_TILE + j]);
                }
            }
            ow += 1u;
            if (ow == weight_params.ow) {
                ow = 0u;
                oh += 1u;
                if (oh == weight_params.oh) {
                    oh = 0u;
                    n += 1u;
                }
            }
        }
    }

    let base = chunk * weight_params.part_stride;
    for (var i = 0u; i < CH_TILE; i++) {
        let co = co0 + i;
        if (co >= weight_params.cout) { continue; }
        for (var j = 0u; j < PX_TILE; j++) {
            let k = k0 + j * WG;
            if (k < ncol) {
                bw_part[base + co * ncol + k] = acc[i * PX_TILE + j];
            }
        }
        if (wg.x == 0u && li == 0u) {
            bw_part[base + weight_params.cout * ncol + co] = bacc[i];
        }
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_reduce: d_w[e] += sum_chunk part[chunk, e] for e < nw, and d_b likewise
// for the Cout entries after them, the chunks in a fixed order.
struct ReduceParams {
    total: u32,        // entries to reduce: nw, or nw + Cout with the bias
    nw: u32,           // Cout*Cin*KH*KW
    chunks: u32,
    part_stride: u32,  // floats per chunk in the scratch
    has_bias: u32,
    w_off: u32,        // offset of d_w
    b_off: u32,        // offset of d_b
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> pr: ReduceParams;
@group(0) @binding(1) var<storage, read> br_part: array<f32>;       // (chunks, part_stride)
@group(0) @binding(2) var<storage, read_write> br_d_w: array<f32>;  // (Cout, Cin, KH, KW) at pr.w_off
@group(0) @binding(3) var<storage, read_write> br_d_b: array<f32>;  // (Cout) at pr.b_off, if pr.has_bias

@compute @workgroup_size(WG)
fn backward_weight_reduce(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= pr.total) { return; }
    var s = 0.0;
    for (var c = 0u; c < pr.chunks; c++) {
        s += br_part[c * pr.part_stride + e];
    }
    if (e < pr.nw) {
        br_d_w[pr.w_off + e] += s;
    } else if (pr.has_bias != 0u) {
        br_d_b[pr.b_off + e - pr.nw] += s;
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_rows: 3x3 kernel (TAPS = 3 taps per row), stride 1, pad 1, vec4 layout.
// One invocation owns CH_TILE output channels (4 .. 16, from workgroup_id.y) x PX_TILE (1 or
// 2) kernel rows (ci, kh) (lane l: rows l, l + WG) x the 3 taps of a row, summed over one
// chunk of pixel groups of 4. Per group and row it loads the 3 aligned vec4s covering the
// flat window q0 + (kh-1)*W - 1 + [0, 6) once and shifts it for the 3 taps; the d_y loads
// are workgroup-uniform vec4s. The tile acc[(j * TAPS + t) * 4 + cb] holds, for row j and tap t,
// the sums of channels 4 cb .. 4 cb + 3 (a vec4 over channels: x_t * G_cb, with G_cb's
// columns the 4 channels' d_y vec4s, is the 4 dot products over the group's pixels); all
// its indices are constants so it stays in registers. Output layout as
// backward_weight_partial (column (ci, kh, kw) = row * TAPS + kw); weight_params.chunk_len counts pixel
// groups of 4.
@group(0) @binding(1) var<storage, read> rows_d_y: array<vec4<f32>>;        // (N, Cout, H*W/4) via weight_params.out
@group(0) @binding(2) var<storage, read> rows_x: array<vec4<f32>>;          // (N, Cin, H*W/4) via weight_params.inp
@group(0) @binding(3) var<storage, read> rows_scale: array<f32>;            // (Cin) at weight_params.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> rows_shift: array<f32>;            // (Cin) at weight_params.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> rows_part: array<f32>;       // (chunks, Cout*Cin*9 + Cout)

const TAPS: u32 = 3u;
alias RowTile = array<vec4<f32>, 24>;

fn rows_mac(acc: ptr<function, RowTile>, k: u32, x: vec4<f32>, g0: mat4x4<f32>,
          g1: mat4x4<f32>, g2: mat4x4<f32>, g3: mat4x4<f32>) {
    (*acc)[k] += x * g0;
    if (CH_TILE > 4u) { (*acc)[k + 1u] += x * g1; }
    if (CH_TILE > 8u) { (*acc)[k + 2u] += x * g2; }
    if (CH_TILE > 12u) { (*acc)[k + 3u] += x * g3; }
}

// d_y of the tile's 16 channels co0 .. co0 + 15 (clamped) at one pixel group: rows_dy16(yb,
// co0, hw4, lane)[cb] has channel co0 + 4 cb + c in column c; yb = vec4 index of
// d_y[n, 0, group]. Defined in uniform_loads.wgsl / subgroup.wgsl.
alias Dy16 = array<mat4x4<f32>, 4>;

// Writes the sums `a` of channels co0 + 4 cb .. + 3 for kernel row k, tap t.
fn rows_store(a: vec4<f32>, k: u32, t: u32, cb: u32, co0: u32, base: u32, ncol: u32) {
    if (k >= weight_params.cin * TAPS) { return; }
    var v = a;
    for (var c = 0u; c < 4u; c++) {
        let co = co0 + 4u * cb + c;
        if (co >= weight_params.cout || 4u * cb + c >= CH_TILE) { return; }
        rows_part[base + co * ncol + k * TAPS + t] = v[c];
    }
}

// The tap inputs of one kernel row at the pixel group (x' with the prologue, masked).
fn rows_row(gi: i32, last: i32, r: u32, dh: i32, sc: f32, sh: f32, rowv: vec4<i32>,
          col_l: vec4<bool>, col_r: vec4<bool>) -> Taps {
    var a = rows_x[u32(clamp(gi, 0, last))];
    var b = rows_x[u32(clamp(gi + 1, 0, last))];
    var c = rows_x[u32(clamp(gi + 2, 0, last))];
    if (PROLOGUE) {
        a = max(fma(a, vec4(sc), vec4(sh)), vec4(0.0));
        b = max(fma(b, vec4(sc), vec4(sh)), vec4(0.0));
        c = max(fma(c, vec4(sc), vec4(sh)), vec4(0.0));
    }
    let rv = rowv + vec4(dh);
    return taps(a, b, c, r, (rv >= vec4(0)) & (rv < vec4(i32(weight_params.h))), col_l, col_r);
}

// The body of the backward_weight_rows entry points (`lane` as in conv1x1_body; the d_y loads go
// through rows_dy16).
fn rows_body(wg: vec3<u32>, li: u32, lane: u32) {
    let hw4 = (weight_params.h * weight_params.w) / 4u;
    let ngrp = weight_params.n * hw4;
    let nrow = weight_params.cin * TAPS;
    let ncol = nrow * TAPS;
    let co0 = wg.y * CH_TILE;
    let ka = wg.x * (WG * PX_TILE) + li;
    let kb = ka + WG;
    let chunk = wg.z;
    let g_begin = chunk * weight_params.chunk_len;
    let g_end = min(g_begin + weight_params.chunk_len, ngrp);
    let last = i32(arrayLength(&rows_x)) - 1;
    let wi = i32(weight_params.w);
    let hi = i32(weight_params.h);
    let half = 1;

    // Geometry of rows a and b: row k = (ci, kh) reads x at the flat shift
    // d = (kh - pad) * W - pad: vec4 offset ci * H*W/4 + floor(d / 4), misalignment d mod 4.
    let ra = min(ka, nrow - 1u);
    let rb = min(kb, nrow - 1u);
    let ci_a = ra / TAPS;
    let ci_b = rb / TAPS;
    let dh_a = i32(ra - ci_a * TAPS) - half;
    let dh_b = i32(rb - ci_b * TAPS) - half;
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
        sc_a = rows_scale[weight_params.sc_off + ci_a];
        sh_a = rows_shift[weight_params.sh_off + ci_a];
        sc_b = rows_scale[weight_params.sc_off + ci_b];
        sh_b = rows_shift[weight_params.sh_off + ci_b];
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
    var rowv = vec4<i32>(qv0 / weight_params.w);
    var colv = vec4<i32>(qv0 % weight_params.w);
    for (var g = g_begin; g < g_end; g++) {
        if (q0 == hw4 * 4u) {
            q0 = 0u;
            n += 1u;
            rowv -= vec4(hi);
        }
        let xb = i32((weight_params.inp.offset + n * weight_params.inp.batch_stride) / 4u + q0 / 4u);
        let col_l = colv >= vec4(1);
        let col_r = colv < vec4(wi - 1);
        let ta = rows_row(xb + xo_a, last, r_a, dh_a, sc_a, sh_a, rowv, col_l, col_r);
        if (PX_TILE > 1u) {
            tb = rows_row(xb + xo_b, last, r_b, dh_b, sc_b, sh_b, rowv, col_l, col_r);
        }
        let x00 = ta.x0;
        let x01 = ta.x1;
        let x02 = ta.x2;
        let x10 = tb.x0;
        let x11 = tb.x1;
        let x12 = tb.x2;
        let yb = (weight_params.out.offset + n * weight_params.out.batch_stride) / 4u + q0 / 4u;
        let dy = rows_dy16(yb, co0, hw4, lane);
        let g0 = dy[0];
        bsum[0] += ones * g0;
        if (CH_TILE > 4u) { g1 = dy[1]; bsum[1] += ones * g1; }
        if (CH_TILE > 8u) { g2 = dy[2]; bsum[2] += ones * g2; }
        if (CH_TILE > 12u) { g3 = dy[3]; bsum[3] += ones * g3; }
        rows_mac(&acc, 0u, x00, g0, g1, g2, g3);
        rows_mac(&acc, 4u, x01, g0, g1, g2, g3);
        rows_mac(&acc, 8u, x02, g0, g1, g2, g3);
        if (PX_TILE > 1u) {
            rows_mac(&acc, 12u, x10, g0, g1, g2, g3);
            rows_mac(&acc, 16u, x11, g0, g1, g2, g3);
            rows_mac(&acc, 20u, x12, g0, g1, g2, g3);
        }
        q0 += 4u;
        colv += vec4(4);
        let wrap = colv >= vec4(wi);
        colv -= select(vec4(0), vec4(wi), wrap);
        rowv += select(vec4(0), vec4(1), wrap);
    }

    let base = chunk * weight_params.part_stride;
    rows_store(acc[0], ka, 0u, 0u, co0, base, ncol);
    if (CH_TILE > 4u) { rows_store(acc[1], ka, 0u, 1u, co0, base, ncol); }
    if (CH_TILE > 8u) { rows_store(acc[2], ka, 0u, 2u, co0, base, ncol); }
    if (CH_TILE > 12u) { rows_store(acc[3], ka, 0u, 3u, co0, base, ncol); }
    rows_store(acc[4], ka, 1u, 0u, co0, base, ncol);
    if (CH_TILE > 4u) { rows_store(acc[5], ka, 1u, 1u, co0, base, ncol); }
    if (CH_TILE > 8u) { rows_store(acc[6], ka, 1u, 2u, co0, base, ncol); }
    if (CH_TILE > 12u) { rows_store(acc[7], ka, 1u, 3u, co0, base, ncol); }
    rows_store(acc[8], ka, 2u, 0u, co0, base, ncol);
    if (CH_TILE > 4u) { rows_store(acc[9], ka, 2u, 1u, co0, base, ncol); }
    if (CH_TILE > 8u) { rows_store(acc[10], ka, 2u, 2u, co0, base, ncol); }
    if (CH_TILE > 12u) { rows_store(acc[11], ka, 2u, 3u, co0, base, ncol); }
    if (PX_TILE > 1u) { rows_store(acc[12], kb, 0u, 0u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 4u) { rows_store(acc[13], kb, 0u, 1u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 8u) { rows_store(acc[14], kb, 0u, 2u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 12u) { rows_store(acc[15], kb, 0u, 3u, co0, base, ncol); }
    if (PX_TILE > 1u) { rows_store(acc[16], kb, 1u, 0u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 4u) { rows_store(acc[17], kb, 1u, 1u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 8u) { rows_store(acc[18], kb, 1u, 2u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 12u) { rows_store(acc[19], kb, 1u, 3u, co0, base, ncol); }
    if (PX_TILE > 1u) { rows_store(acc[20], kb, 2u, 0u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 4u) { rows_store(acc[21], kb, 2u, 1u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 8u) { rows_store(acc[22], kb, 2u, 2u, co0, base, ncol); }
    if (PX_TILE > 1u && CH_TILE > 12u) { rows_store(acc[23], kb, 2u, 3u, co0, base, ncol); }
    if (wg.x == 0u && li == 0u) {
        for (var cb = 0u; cb < 4u; cb++) {
            var v = bsum[cb];
            for (var c = 0u; c < 4u; c++) {
                let co = co0 + 4u * cb + c;
                if (co < weight_params.cout && 4u * cb + c < CH_TILE) {
                    rows_part[base + weight_params.cout * ncol + co] = v[c];
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// backward_weight_dot: 1x1, stride 1, no padding, vec4 layout, straight from NCHW x and
// d_y (no pixel-major copies). Partial sums over one chunk of pixel groups of 4
// (workgroup_id.z), layout as backward_weight_partial (columns = input channels):
//   part[chunk, co * Cin + ci] = sum_{n,q} d_y[n,co,q] * x'[n,ci,q]
//   part[chunk, Cout * Cin + co] = sum_{n,q} d_y[n,co,q]
// One invocation owns 8 input channels (lane l: ci 8 l' .. 8 l' + 7, l' = workgroup_id.x *
// WG + l) x the CH_TILE output channels of workgroup_id.y. Per pixel group it loads the 8
// x' vec4s along pixels and the tile's d_y through rows_dy16 (so the subgroup variant shares
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
    let ci = min(ci0 + j, weight_params.cin - 1u);
    var v = rows_x[xb + ci * hw4];
    if (PROLOGUE) { v = max(fma(v, sc, sh), vec4(0.0)); }
    return v;
}

// Writes acc[4 j + cb]: d_w of input channel ci0 + j for channels co0 + 4 cb .. + 3.
fn bd_store(a: vec4<f32>, ci: u32, cb: u32, co0: u32, base: u32) {
    if (ci >= weight_params.cin) { return; }
    var v = a;
    for (var c = 0u; c < 4u; c++) {
        let co = co0 + 4u * cb + c;
        if (co >= weight_params.cout || 4u * cb + c >= CH_TILE) { return; }
        rows_part[base + co * weight_params.cin + ci] = v[c];
    }
}

// The body of the backward_weight_dot entry points (`lane` as in conv1x1_body).
fn bd_body(wg: vec3<u32>, li: u32, lane: u32) {
    let hw4 = (weight_params.h * weight_params.w) / 4u;
    let ngrp = weight_params.n * hw4;
    let co0 = wg.y * CH_TILE;
    let ci0 = (wg.x * WG + li) * 8u;
    let chunk = wg.z;
    let g_begin = chunk * weight_params.chunk_len;
    let g_end = min(g_begin + weight_params.chunk_len, ngrp);
    // Per-channel prologue coefficients of the lane's 8 input channels.
    var sc: array<vec4<f32>, 8>;
    var sh: array<vec4<f32>, 8>;
    if (PROLOGUE) {
        for (var j = 0u; j < 8u; j++) {
            let ci = min(ci0 + j, weight_params.cin - 1u);
            sc[j] = vec4(rows_scale[weight_params.sc_off + ci]);
            sh[j] = vec4(rows_shift[weight_params.sh_off + ci]);
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
        let xb = (weight_params.inp.offset + n * weight_params.inp.batch_stride) / 4u + q;
        let yb = (weight_params.out.offset + n * weight_params.out.batch_stride) / 4u + q;
        let dy = rows_dy16(yb, co0, hw4, lane);
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

    let base = chunk * weight_params.part_stride;
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
                if (co < weight_params.cout && 4u * cb + c < CH_TILE) {
                    rows_part[base + weight_params.cout * weight_params.cin + co] = dot(bsum[cb], vec4(f32(c == 0u), f32(c == 1u), f32(c == 2u), f32(c == 3u)));
                }
            }
        }
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
@group(0) @binding(2) var<storage, read> bs_x: array<f32>;                // (N, Cin, H, W) via weight_params.inp
@group(0) @binding(3) var<storage, read> bs_scale: array<f32>;            // (Cin) at weight_params.sc_off, if PROLOGUE
@group(0) @binding(4) var<storage, read> bs_shift: array<f32>;            // (Cin) at weight_params.sh_off, if PROLOGUE
@group(0) @binding(5) var<storage, read_write> bs_part: array<f32>;       // (chunks, Cout*ncol + Cout)

fn bs_store(blk: mat4x4<f32>, co: u32, gi: u32, base: u32, ncol: u32) {
    var b = blk;
    for (var c = 0u; c < 4u; c++) {
        if (co + c >= weight_params.cout) { return; }
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
    let kk = weight_params.kh * weight_params.kw;
    let k = min(vec4(4u * gi) + vec4(0u, 1u, 2u, 3u), vec4(ncol - 1u));
    let ci = k / kk;
    let t = k - ci * kk;
    let kh = t / weight_params.kw;
    let kw = t - kh * weight_params.kw;
    var c: Cols;
    c.dh = vec4<i32>(kh) - vec4(i32(weight_params.pad));
    c.dw = vec4<i32>(kw) - vec4(i32(weight_params.pad));
    c.xc = ci * (weight_params.h * weight_params.w);
    c.sc = vec4(1.0);
    c.sh = vec4(0.0);
    if (PROLOGUE) {
        c.sc = vec4(bs_scale[weight_params.sc_off + ci.x], bs_scale[weight_params.sc_off + ci.y],
                    bs_scale[weight_params.sc_off + ci.z], bs_scale[weight_params.sc_off + ci.w]);
        c.sh = vec4(bs_shift[weight_params.sh_off + ci.x], bs_shift[weight_params.sh_off + ci.y],
                    bs_shift[weight_params.sh_off + ci.z], bs_shift[weight_params.sh_off + ci.w]);
    }
    return c;
}
// x' at the 4 columns for the input position (ih0, iw0) = (oh*s, ow*s) of image base xn.
fn bs_x4(c: Cols, xn: u32, ih0: i32, iw0: i32) -> vec4<f32> {
    let ih = vec4(ih0) + c.dh;
    let iw = vec4(iw0) + c.dw;
    let ok = (ih >= vec4(0)) & (ih < vec4(i32(weight_params.h))) & (iw >= vec4(0)) & (iw < vec4(i32(weight_params.w)));
    let idx = select(vec4(xn), vec4(xn) + c.xc + vec4<u32>(ih) * weight_params.w + vec4<u32>(iw), ok);
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
    let xn = weight_params.inp.offset + pos.z * weight_params.inp.batch_stride;
    let ih0 = i32(pos.y * weight_params.stride);
    let iw0 = i32(pos.x * weight_params.stride);
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

// The body of the backward_weight_strided entry points (`lane` as in conv1x1_body). d_y at pixel k
// comes from bs_dy_at (uniform_loads.wgsl or subgroup.wgsl) for the pixels of
// the chunk below its last multiple of 8, and is loaded directly for the rest: two loops, so
// the loop body has no branch on which case applies.
fn bs_body(wg: vec3<u32>, li: u32, lane: u32) {
    let ohw = weight_params.oh * weight_params.ow;
    let npix = weight_params.n * ohw;
    let ncol = weight_params.cin * weight_params.kh * weight_params.kw;
    let cop4 = (weight_params.cout + 3u) / 4u;
    let co0 = wg.y * CH_TILE;
    let os = min(vec4(co0 / 4u) + vec4(0u, 1u, 2u, 3u), vec4(cop4 - 1u));
    let ga = wg.x * (WG * PXV) + li;
    let gb = ga + WG;
    let ca = bs_cols(ga, ncol);
    let cb = bs_cols(gb, ncol);
    let chunk = wg.z;
    let k_begin = chunk * weight_params.chunk_len;
    let k_end = min(k_begin + weight_params.chunk_len, npix);

    var acc: Tile8;
    var sums: mat4x4<f32>;
    if (k_begin < k_end) {
        let n0 = k_begin / ohw;
        let r0 = k_begin - n0 * ohw;
        let oh0 = r0 / weight_params.ow;
        var pos = vec3(r0 - oh0 * weight_params.ow, oh0, n0);
        let k8 = k_begin + (k_end - k_begin) / 8u * 8u;
        var l: W4;
        for (var k = k_begin; k < k8; k++) {
            bs_pixel(&acc, &sums, bs_dy_at(&l, k, k_begin, cop4, os, lane), ca, cb, pos);
            pos = count_next(pos, vec2(weight_params.ow, weight_params.oh));
        }
        for (var k = k8; k < k_end; k++) {
            bs_pixel(&acc, &sums, bs_load_dy(k, cop4, os), ca, cb, pos);
            pos = count_next(pos, vec2(weight_params.ow, weight_params.oh));
        }
    }

    let base = chunk * weight_params.part_stride;
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
            if (co < weight_params.cout) {
                bs_part[base + weight_params.cout * ncol + co] = sums[i / 4u][i % 4u];
            }
        }
    }
}
