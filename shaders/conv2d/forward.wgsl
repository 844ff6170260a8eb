// conv2d kernels of the forward pass (conv1x1 and conv3x3 also run backward_data in the
// vec4 layout); formulas, DataParams and the shared tile helpers in common.wgsl.

// ---------------------------------------------------------------------------------------
// conv1x1: 1x1 kernel, stride 1, no padding: a GEMM over channels per pixel.
//   forward:       y[n,co,q]    = b[co] + sum_ci w[co,ci] * x'[n,ci,q]
//   backward_data: d_x[n,ci,q] += sum_co w[co,ci] * d_y[n,co,q]
// One invocation owns CH_TILE channels (4 .. 16, from workgroup_id.y) x PXV pixel groups of
// 4 (lane l of a block owns the groups l, l + WG).
@group(0) @binding(1) var<storage, read> conv1x1_inp: array<vec4<f32>>;        // (N, red_c, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read> conv1x1_w: array<vec4<f32>>;          // (red_c, OCP) packed (pack_weight)
@group(0) @binding(3) var<storage, read> conv1x1_b: array<f32>;                // (out_c) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> conv1x1_scale: array<f32>;            // (red_c) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> conv1x1_shift: array<f32>;            // (red_c) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> conv1x1_out: array<vec4<f32>>;  // (N, out_c, H*W/4) via p.out

// vec4 index of the packed weights of channels oc0 + 4 cb .. + 3 (clamped to the last
// block; clamped channels are never stored).
fn w_block(oc0: u32, cb: u32) -> u32 {
    return min(oc0 / 4u + cb, (p.out_c + 3u) / 4u - 1u);
}
// Stores block `blk` (channels oc0 + 4 cb .. + 3) at vec4 index ob (+ channel * hw4).
fn conv1x1_store(blk: mat4x4<f32>, oc0: u32, cb: u32, ob: u32, hw4: u32) {
    var b = blk;
    for (var c = 0u; c < 4u; c++) {
        let oc = oc0 + 4u * cb + c;
        if (oc >= p.out_c || 4u * cb + c >= CH_TILE) { return; }
        let o = ob + oc * hw4;
        if (p.accumulate != 0u) {
            conv1x1_out[o] += b[c];
        } else if (p.has_bias != 0u) {
            conv1x1_out[o] = b[c] + vec4(conv1x1_b[p.b_off + oc]);
        } else {
            conv1x1_out[o] = b[c];
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

// Packed weight row `row` at the tile's blocks os = (o0, o1, o2, o3) (the packed weight
// starts at float p.w_off, a multiple of 4).
fn conv1x1_load(row: u32, ocp4: u32, os: vec4<u32>) -> W4 {
    let wo = p.w_off / 4u + row * ocp4;
    var w = W4(conv1x1_w[wo + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) { w.w1 = conv1x1_w[wo + os.y]; }
    if (CH_TILE > 8u) { w.w2 = conv1x1_w[wo + os.z]; }
    if (CH_TILE > 12u) { w.w3 = conv1x1_w[wo + os.w]; }
    return w;
}

// What conv1x1 needs of summed channel rc besides its inputs: the tile's weights and,
// with the prologue, the channel's (scale, shift). Both are the same for every lane.
struct C1Coef {
    w: W4,
    pro: vec2<f32>,
}

fn conv1x1_coef(rc: u32, ocp4: u32, os: vec4<u32>) -> C1Coef {
    var c = C1Coef(conv1x1_load(rc, ocp4, os), vec2(1.0, 0.0));
    if (PROLOGUE) { c.pro = vec2(conv1x1_scale[p.sc_off + rc], conv1x1_shift[p.sh_off + rc]); }
    return c;
}

// One summed channel rc: acc += w (x) inp'[rc] at the lane's pixel groups (vec4 indices
// ia, ib of channel 0).
fn conv1x1_chan(acc: ptr<function, Tile8>, rc: u32, ia: u32, ib: u32, hw4: u32, c: C1Coef) {
    var xa = conv1x1_inp[ia + rc * hw4];
    var xb = vec4(0.0);
    if (PXV > 1u) { xb = conv1x1_inp[ib + rc * hw4]; }
    if (PROLOGUE) {
        let sc = vec4(c.pro.x);
        let sh = vec4(c.pro.y);
        xa = max(fma(xa, sc, sh), vec4(0.0));
        xb = max(fma(xb, sc, sh), vec4(0.0));
    }
    mac_tile(acc, c.w.w0, c.w.w1, c.w.w2, c.w.w3, xa, xb);
}

// The body of the conv1x1 entry points; `lane` is the lane's subgroup_invocation_id (0 in
// the plain module). The weights (and prologue coefficients) of channel rc come from
// conv1x1_weights (uniform_loads.wgsl or subgroup.wgsl), which may keep state in
// `l` across channels.
fn conv1x1_body(wg: vec3<u32>, nwg: vec3<u32>, li: u32, lane: u32) {
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
    // With per-image weights the workgroup's image na picks them (the same for all lanes).
    let image_w = vec4(na * (p.w_image_stride / 4u));
    let os = vec4(w_block(oc0, 0u), w_block(oc0, 1u), w_block(oc0, 2u), w_block(oc0, 3u)) + image_w;
    let ocp4 = (p.out_c + 3u) / 4u;
    // The channels below the last multiple of 8 take their weights from conv1x1_weights (which
    // may share loads across groups of 8 lanes), the rest load them directly: two loops, so
    // the loop body has no branch on which case applies.
    let red8 = p.red_c / 8u * 8u;
    var acc: Tile8;
    var l: C1Coef;
    for (var rc = 0u; rc < red8; rc++) {
        conv1x1_chan(&acc, rc, ia, ib, hw4, conv1x1_weights(&l, rc, ocp4, os, lane));
    }
    for (var rc = red8; rc < p.red_c; rc++) {
        conv1x1_chan(&acc, rc, ia, ib, hw4, conv1x1_coef(rc, ocp4, os));
    }
    if (ga < ngrp) {
        let ob = (p.out.offset + na * p.out.batch_stride) / 4u + (ga - na * hw4);
        conv1x1_store(acc[0], oc0, 0u, ob, hw4);
        conv1x1_store(acc[2], oc0, 1u, ob, hw4);
        conv1x1_store(acc[4], oc0, 2u, ob, hw4);
        conv1x1_store(acc[6], oc0, 3u, ob, hw4);
    }
    if (PXV > 1u && gb < ngrp) {
        let ob = (p.out.offset + nb * p.out.batch_stride) / 4u + (gb - nb * hw4);
        conv1x1_store(acc[1], oc0, 0u, ob, hw4);
        conv1x1_store(acc[3], oc0, 1u, ob, hw4);
        conv1x1_store(acc[5], oc0, 2u, ob, hw4);
        conv1x1_store(acc[7], oc0, 3u, ob, hw4);
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
@group(0) @binding(1) var<storage, read> conv3x3_inp: array<vec4<f32>>;        // (N, red_c, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read> conv3x3_w: array<vec4<f32>>;          // (red_c * 9, OCP) packed (pack_weight)
@group(0) @binding(3) var<storage, read> conv3x3_b: array<f32>;                // (out_c) at p.b_off, if p.has_bias
@group(0) @binding(4) var<storage, read> conv3x3_scale: array<f32>;            // (red_c) at p.sc_off, if PROLOGUE
@group(0) @binding(5) var<storage, read> conv3x3_shift: array<f32>;            // (red_c) at p.sh_off, if PROLOGUE
@group(0) @binding(6) var<storage, read_write> conv3x3_out: array<vec4<f32>>;  // (N, out_c, H*W/4) via p.out

// Elements r .. r+3 of the 8 consecutive elements a, b (r in 0..3).
fn window4(a: vec4<f32>, b: vec4<f32>, r: u32) -> vec4<f32> {
    var s = a;
    s = select(s, vec4(a.yzw, b.x), r == 1u);
    s = select(s, vec4(a.zw, b.xy), r == 2u);
    s = select(s, vec4(a.w, b.xyz), r == 3u);
    return s;
}
fn conv3x3_store(blk: mat4x4<f32>, oc0: u32, cb: u32, ob: u32, hw4: u32) {
    var b = blk;
    for (var c = 0u; c < 4u; c++) {
        let oc = oc0 + 4u * cb + c;
        if (oc >= p.out_c || 4u * cb + c >= CH_TILE) { return; }
        let o = ob + oc * hw4;
        if (p.accumulate != 0u) {
            conv3x3_out[o] += b[c];
        } else if (p.has_bias != 0u) {
            conv3x3_out[o] = b[c] + vec4(conv3x3_b[p.b_off + oc]);
        } else {
            conv3x3_out[o] = b[c];
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
fn conv3x3_load(rc: u32, ti: u32, ocp4: u32, os: vec4<u32>) -> W12 {
    let wa = (rc * 9u + 3u * ti) * ocp4;
    var w: W12;
    w.t0 = W4(conv3x3_w[wa + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    w.t1 = W4(conv3x3_w[wa + ocp4 + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    w.t2 = W4(conv3x3_w[wa + 2u * ocp4 + os.x], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) {
        w.t0.w1 = conv3x3_w[wa + os.y];
        w.t1.w1 = conv3x3_w[wa + ocp4 + os.y];
        w.t2.w1 = conv3x3_w[wa + 2u * ocp4 + os.y];
    }
    if (CH_TILE > 8u) {
        w.t0.w2 = conv3x3_w[wa + os.z];
        w.t1.w2 = conv3x3_w[wa + ocp4 + os.z];
        w.t2.w2 = conv3x3_w[wa + 2u * ocp4 + os.z];
    }
    if (CH_TILE > 12u) {
        w.t0.w3 = conv3x3_w[wa + os.w];
        w.t1.w3 = conv3x3_w[wa + ocp4 + os.w];
        w.t2.w3 = conv3x3_w[wa + 2u * ocp4 + os.w];
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
fn conv3x3_chan(acc: ptr<function, Tile8>, rc: u32, c: RowCtx, w: W12) {
    let gi = c.g0 + i32(rc * c.hw4);
    var a = conv3x3_inp[u32(clamp(gi, 0, c.last))];
    var b = conv3x3_inp[u32(clamp(gi + 1, 0, c.last))];
    var d = conv3x3_inp[u32(clamp(gi + 2, 0, c.last))];
    var e = vec4(0.0);
    if (PXV > 1u) { e = conv3x3_inp[u32(clamp(gi + 3, 0, c.last))]; }
    if (PROLOGUE) {
        let sc = vec4(conv3x3_scale[p.sc_off + rc]);
        let sh = vec4(conv3x3_shift[p.sh_off + rc]);
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

// The body of the conv3x3 entry points (`lane` as in conv1x1_body; weights from conv3x3_weights).
fn conv3x3_body(wg: vec3<u32>, nwg: vec3<u32>, li: u32, lane: u32) {
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
    c.last = i32(arrayLength(&conv3x3_inp)) - 1;
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
            conv3x3_chan(&acc, rc, c, conv3x3_weights(&l, rc, ti, ocp4, os, lane));
        }
        for (var rc = red8; rc < p.red_c; rc++) {
            conv3x3_chan(&acc, rc, c, conv3x3_load(rc, ti, ocp4, os));
        }
    }

    if (gid >= nblk) { return; }
    let ob = (p.out.offset + n * p.out.batch_stride) / 4u + q0 / 4u;
    conv3x3_store(acc[0], oc0, 0u, ob, hw4);
    conv3x3_store(acc[2], oc0, 1u, ob, hw4);
    conv3x3_store(acc[4], oc0, 2u, ob, hw4);
    conv3x3_store(acc[6], oc0, 3u, ob, hw4);
    if (PXV > 1u) {
        conv3x3_store(acc[1], oc0, 0u, ob + 1u, hw4);
        conv3x3_store(acc[3], oc0, 1u, ob + 1u, hw4);
        conv3x3_store(acc[5], oc0, 2u, ob + 1u, hw4);
        conv3x3_store(acc[7], oc0, 3u, ob + 1u, hw4);
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
// binding 2: the packed weights (Cin * KH*KW, OCP), read through conv1x1's conv1x1_w (conv1x1_load).
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

// The body of the forward_tiled entry points (`lane` as in conv1x1_body). The weights of step r
// come from ft_weights (uniform_loads.wgsl or subgroup.wgsl) for the steps
// below the last multiple of 8 and are loaded directly for the rest.
fn ft_body(wg: vec3<u32>, nwg: vec3<u32>, li: u32, lane: u32) {
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
        ft_step(&acc, ft_weights(&l, r, ocp4, os, lane), s.z, s.y, s.x, pa, pb);
        s = count_next(s, vec2(p.cin, p.kw));
    }
    for (var r = r8; r < steps; r++) {
        ft_step(&acc, conv1x1_load(ft_row(r), ocp4, os), s.z, s.y, s.x, pa, pb);
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
