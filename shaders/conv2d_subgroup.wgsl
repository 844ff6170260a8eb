// Subgroup variants of the conv1x1 / conv3x3 fast paths; this file is appended to
// conv2d.wgsl (same Params, bindings, dispatch, register tile and stores) and is only built
// on adapters with subgroup operations and subgroups of at least 8 invocations.
//   conv1x1_sg: out[n,oc,q] (= b[oc] +) / (+=) sum_rc w[oc,rc] * inp'[n,rc,q]
//   conv3x3_sg: out[n,oc,h,w] (= b[oc] +) / (+=) sum_{rc,i,j} w[oc,rc,i,j] * inp'[n,rc,h+i-1,w+j-1]
//
// Why: the weights are the same for every lane of a workgroup, but on lavapipe a
// workgroup-uniform storage load costs about as much as a per-lane one (a loop over the 8
// lanes of a SIMD row), and the weight loads were most of the loads of conv1x1 / conv3x3.
// Here lane s of every group of 8 loads the weights of summed channel rc0 + (s % 8) once per
// 8 channels (one load where there were eight), and for channel rc the weights come from
// lane rc % 8 of the lane's group through subgroupShuffle. The loop is not unrolled: on
// lavapipe an 8-fold unrolled body (with a constant-lane subgroupBroadcast) ran 1.6x slower
// than this rolled loop. Channels beyond the last multiple of 8 load their weights directly.

// The 4 weight vec4s of one summed channel (channels oc0 .. oc0 + 15 of the tile).
struct W4 {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
}

// One summed channel rc: acc += w (x) inp'[rc] at the lane's pixel groups a and b.
fn c1_sg_chan(acc: ptr<function, Tile8>, rc: u32, ia: u32, ib: u32, hw4: u32, w: W4) {
    var xa = c1_inp[ia + rc * hw4];
    var xb = vec4(0.0);
    if (PXV > 1u) { xb = c1_inp[ib + rc * hw4]; }
    if (PROLOGUE) {
        let sc = vec4(c1_scale[p.sc_off + rc]);
        let sh = vec4(c1_shift[p.sh_off + rc]);
        xa = max(fma(xa, sc, sh), vec4(0.0));
        xb = max(fma(xb, sc, sh), vec4(0.0));
    }
    mac_tile(acc, w.w0, w.w1, w.w2, w.w3, xa, xb);
}

// The weights of this lane's summed channel: packed row `row`, blocks o0 .. o3.
fn c1_sg_load(row: u32, ocp4: u32, o0: u32, o1: u32, o2: u32, o3: u32) -> W4 {
    let wo = row * ocp4;
    var w = W4(c1_w[wo + o0], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) { w.w1 = c1_w[wo + o1]; }
    if (CH_TILE > 8u) { w.w2 = c1_w[wo + o2]; }
    if (CH_TILE > 12u) { w.w3 = c1_w[wo + o3]; }
    return w;
}

@compute @workgroup_size(WG)
fn conv1x1_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) sl: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let ngrp = p.n * hw4;
    let ga = block_id(wg, nwg) * (WG * PXV) + li;
    let gb = ga + WG;
    let na = min(ga, ngrp - 1u) / hw4;
    let nb = min(gb, ngrp - 1u) / hw4;
    let ia = (p.inp.offset + na * p.inp.batch_stride) / 4u + (min(ga, ngrp - 1u) - na * hw4);
    let ib = (p.inp.offset + nb * p.inp.batch_stride) / 4u + (min(gb, ngrp - 1u) - nb * hw4);
    let oc0 = tile_id(wg) * CH_TILE;
    let o0 = w_block(oc0, 0u);
    let o1 = w_block(oc0, 1u);
    let o2 = w_block(oc0, 2u);
    let o3 = w_block(oc0, 3u);
    let ocp4 = (p.out_c + 3u) / 4u;
    let s8 = sl % 8u;
    var acc: Tile8;
    let red8 = p.red_c / 8u * 8u;
    let base = sl - s8;
    var l: W4;
    for (var rc = 0u; rc < red8; rc++) {
        let k = rc % 8u;
        if (k == 0u) { l = c1_sg_load(rc + s8, ocp4, o0, o1, o2, o3); }
        c1_sg_chan(&acc, rc, ia, ib, hw4, sh4(l, base + k));
    }
    for (var rc = red8; rc < p.red_c; rc++) {
        c1_sg_chan(&acc, rc, ia, ib, hw4, c1_sg_load(rc, ocp4, o0, o1, o2, o3));
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
// conv3x3_sg: per tap row, the 3 taps' weights of 8 summed channels are loaded one channel
// per lane (12 vec4s) and shuffled out channel by channel.

// The weights of 4 channel blocks for the 3 taps of one kernel row.
struct W12 {
    t0: W4,
    t1: W4,
    t2: W4,
}

fn c3_sg_load(rc: u32, ti: u32, ocp4: u32, o0: u32, o1: u32, o2: u32, o3: u32) -> W12 {
    let wa = (rc * 9u + 3u * ti) * ocp4;
    var w: W12;
    w.t0 = W4(c3_w[wa + o0], vec4(0.0), vec4(0.0), vec4(0.0));
    w.t1 = W4(c3_w[wa + ocp4 + o0], vec4(0.0), vec4(0.0), vec4(0.0));
    w.t2 = W4(c3_w[wa + 2u * ocp4 + o0], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) {
        w.t0.w1 = c3_w[wa + o1];
        w.t1.w1 = c3_w[wa + ocp4 + o1];
        w.t2.w1 = c3_w[wa + 2u * ocp4 + o1];
    }
    if (CH_TILE > 8u) {
        w.t0.w2 = c3_w[wa + o2];
        w.t1.w2 = c3_w[wa + ocp4 + o2];
        w.t2.w2 = c3_w[wa + 2u * ocp4 + o2];
    }
    if (CH_TILE > 12u) {
        w.t0.w3 = c3_w[wa + o3];
        w.t1.w3 = c3_w[wa + ocp4 + o3];
        w.t2.w3 = c3_w[wa + 2u * ocp4 + o3];
    }
    return w;
}

// What one summed channel's step needs besides its weights.
struct RowCtx {
    g0: i32,          // vec4 index of the window start for summed channel 0
    hw4: u32,
    last: i32,
    r: u32,
    ok_a: vec4<bool>,
    ok_b: vec4<bool>,
    col_al: vec4<bool>,
    col_ar: vec4<bool>,
    col_bl: vec4<bool>,
    col_br: vec4<bool>,
}

fn c3_sg_chan(acc: ptr<function, Tile8>, rc: u32, c: RowCtx, w: W12) {
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

// The weights lane `src` holds (every lane of the subgroup takes part).
fn sh4(w: W4, src: u32) -> W4 {
    return W4(subgroupShuffle(w.w0, src), subgroupShuffle(w.w1, src), subgroupShuffle(w.w2, src), subgroupShuffle(w.w3, src));
}
fn sh12(w: W12, src: u32) -> W12 {
    return W12(sh4(w.t0, src), sh4(w.t1, src), sh4(w.t2, src));
}

@compute @workgroup_size(WG)
fn conv3x3_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) sl: u32) {
    let hw4 = (p.h * p.w) / 4u;
    let hwb = hw4 / PXV;
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
    let o0 = w_block(oc0, 0u);
    let o1 = w_block(oc0, 1u);
    let o2 = w_block(oc0, 2u);
    let o3 = w_block(oc0, 3u);
    let ocp4 = (p.out_c + 3u) / 4u;
    let s8 = sl % 8u;
    let base = sl - s8;
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
        let shift = dh * wi - 1;
        c.g0 = ib + (shift >> 2u);
        c.r = u32(shift & 3);
        var l: W12;
        for (var rc = 0u; rc < red8; rc++) {
            let k = rc % 8u;
            if (k == 0u) { l = c3_sg_load(rc + s8, ti, ocp4, o0, o1, o2, o3); }
            c3_sg_chan(&acc, rc, c, sh12(l, base + k));
        }
        for (var rc = red8; rc < p.red_c; rc++) {
            c3_sg_chan(&acc, rc, c, c3_sg_load(rc, ti, ocp4, o0, o1, o2, o3));
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
// backward_weight_rows_sg: backward_weight_rows (conv2d.wgsl) with its 16 workgroup-uniform
// d_y loads per pixel group replaced by 2 per lane and 16 broadcasts.

// d_y of channels co0 .. co0 + 15 (clamped) at one pixel group: lane s % 8 loads channels
// co0 + s % 8 and co0 + 8 + s % 8; channel c then comes from lane c % 8 of the group.
fn bq_dy16(yb: u32, co0: u32, hw4: u32, sl: u32) -> Dy16 {
    let s8 = sl % 8u;
    let a = bq_d_y[yb + min(co0 + s8, p.cout - 1u) * hw4];
    var b = vec4(0.0);
    if (CH_TILE > 8u) { b = bq_d_y[yb + min(co0 + 8u + s8, p.cout - 1u) * hw4]; }
    let base = sl - s8;
    var g: Dy16;
    g[0] = mat4x4<f32>(subgroupShuffle(a, base), subgroupShuffle(a, base + 1u),
                       subgroupShuffle(a, base + 2u), subgroupShuffle(a, base + 3u));
    if (CH_TILE > 4u) {
        g[1] = mat4x4<f32>(subgroupShuffle(a, base + 4u), subgroupShuffle(a, base + 5u),
                           subgroupShuffle(a, base + 6u), subgroupShuffle(a, base + 7u));
    }
    if (CH_TILE > 8u) {
        g[2] = mat4x4<f32>(subgroupShuffle(b, base), subgroupShuffle(b, base + 1u),
                           subgroupShuffle(b, base + 2u), subgroupShuffle(b, base + 3u));
    }
    if (CH_TILE > 12u) {
        g[3] = mat4x4<f32>(subgroupShuffle(b, base + 4u), subgroupShuffle(b, base + 5u),
                           subgroupShuffle(b, base + 6u), subgroupShuffle(b, base + 7u));
    }
    return g;
}

@compute @workgroup_size(WG)
fn backward_weight_rows_sg(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(local_invocation_index) li: u32,
                           @builtin(subgroup_invocation_id) sl: u32) {
    bq_rows(wg, li, sl);
}

// ---------------------------------------------------------------------------------------
// backward_weight_1x1_sg: backward_weight_1x1 (conv2d.wgsl) with the workgroup-uniform d_y
// row of each pixel loaded once per 8 pixels: lane s % 8 loads the row of pixel k0 + s % 8
// and pixel k takes it from lane (k - k_begin) % 8 of its group (as conv1x1_sg does with
// the weights).

// d_y of channels co0 .. co0 + 15 (blocks o0 .. o3) at pixel-major row k.
fn bp_sg_load(k: u32, cop4: u32, o0: u32, o1: u32, o2: u32, o3: u32) -> W4 {
    let yr = k * cop4;
    var g = W4(bp_dy[yr + o0], vec4(0.0), vec4(0.0), vec4(0.0));
    if (CH_TILE > 4u) { g.w1 = bp_dy[yr + o1]; }
    if (CH_TILE > 8u) { g.w2 = bp_dy[yr + o2]; }
    if (CH_TILE > 12u) { g.w3 = bp_dy[yr + o3]; }
    return g;
}

// One pixel k: bias sums += g, acc += g (x) x'[k] at the lane's input-channel blocks.
fn bp_sg_step(acc: ptr<function, Tile8>, bs: ptr<function, mat4x4<f32>>, k: u32, g: W4,
              cip4: u32, xa: u32, xb: u32) {
    let xr = k * cip4;
    let x0 = bp_x[xr + xa];
    var x1 = vec4(0.0);
    if (PXV > 1u) { x1 = bp_x[xr + xb]; }
    *bs += mat4x4<f32>(g.w0, g.w1, g.w2, g.w3);
    mac_tile(acc, g.w0, g.w1, g.w2, g.w3, x0, x1);
}

@compute @workgroup_size(WG)
fn backward_weight_1x1_sg(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(local_invocation_index) li: u32,
                          @builtin(subgroup_invocation_id) sl: u32) {
    let npix = p.n * p.h * p.w;
    let cop4 = (p.cout + 3u) / 4u;
    let cip4 = (p.cin + 3u) / 4u;
    let co0 = wg.y * CH_TILE;
    let o0 = min(co0 / 4u, cop4 - 1u);
    let o1 = min(co0 / 4u + 1u, cop4 - 1u);
    let o2 = min(co0 / 4u + 2u, cop4 - 1u);
    let o3 = min(co0 / 4u + 3u, cop4 - 1u);
    let ga = wg.x * (WG * PXV) + li;
    let xa = min(ga, cip4 - 1u);
    let xb = min(ga + WG, cip4 - 1u);
    let chunk = wg.z;
    let k_begin = chunk * p.chunk_len;
    let k_end = min(k_begin + p.chunk_len, npix);
    let k8_end = k_begin + (k_end - k_begin) / 8u * 8u;
    let s8 = sl % 8u;
    let base = sl - s8;

    var acc: Tile8;
    var bs = mat4x4<f32>();
    var l: W4;
    for (var k = k_begin; k < k8_end; k++) {
        let j = (k - k_begin) % 8u;
        if (j == 0u) { l = bp_sg_load(k + s8, cop4, o0, o1, o2, o3); }
        bp_sg_step(&acc, &bs, k, sh4(l, base + j), cip4, xa, xb);
    }
    for (var k = k8_end; k < k_end; k++) {
        bp_sg_step(&acc, &bs, k, bp_sg_load(k, cop4, o0, o1, o2, o3), cip4, xa, xb);
    }
    bp_finish(&acc, bs, co0, ga, chunk, wg.x == 0u && li == 0u);
}
