// Where a register-tiled kernel's time goes (benches/load_costs.rs): conv1x1's inner loop
//   out[n, oc, q] = sum_rc w[oc, rc] * x[n, rc, q]
// (same tile, dispatch and subgroup weight sharing as conv1x1_sg in shaders/conv2d/forward.wgsl, without
// views, bias or prologue), with its loads switched off one at a time by override
// constants. A switched-off operand is replaced by a value computed from the loop counter,
// so the multiply-adds stay the same and the compiler cannot fold them away:
//   X_LOADS = 1: x is read from the buffer (one vec4 per pixel group and summed channel);
//             0: x = a function of (rc, pixel group).
//   W_LOADS = 1: the 16 weights of summed channel rc are read once per 8 channels by lane
//             s (channel rc0 + s) and passed around with subgroupShuffle;
//             0: w = a function of rc (4 distinct values per vec4).
// Only the full kernel (1, 1) computes the product; the others compute something else at
// the same multiply-add count, and the difference in time is what the loads cost.

override WG: u32 = 64;
override X_LOADS: u32 = 1;
override W_LOADS: u32 = 1;

struct Params {
    red_c: u32,   // summed channels
    hw4: u32,     // pixel groups of 4 per image plane
    n: u32,       // images
    out_c: u32,   // output channels (a multiple of 16)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;             // (n, red_c, hw4)
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;             // (red_c, out_c / 4) packed
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;     // (n, out_c, hw4)

alias Tile = array<mat4x4<f32>, 8>;

struct W4 {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
}

fn outer4(a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(b * a.x, b * a.y, b * a.z, b * a.w);
}

fn w_row(rc: u32, ocp4: u32, ob: u32) -> W4 {
    let r = rc * ocp4 + ob;
    return W4(w[r], w[r + 1u], w[r + 2u], w[r + 3u]);
}

fn shuffled(l: W4, src: u32) -> W4 {
    return W4(subgroupShuffle(l.w0, src), subgroupShuffle(l.w1, src),
              subgroupShuffle(l.w2, src), subgroupShuffle(l.w3, src));
}

fn x_at(i: u32, rc: u32) -> vec4<f32> {
    if (X_LOADS == 1u) { return x[i]; }
    return vec4(f32(rc) * 1e-3 + f32(i & 255u) * 1e-4);
}

@compute @workgroup_size(WG)
fn conv1x1_costs(@builtin(workgroup_id) wg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32,
                 @builtin(subgroup_invocation_id) sl: u32) {
    let ngrp = p.n * p.hw4;
    let ga = wg.y * (2u * WG) + li;       // the lane's two pixel groups
    let gb = ga + WG;
    let ca = min(ga, ngrp - 1u);
    let cb = min(gb, ngrp - 1u);
    let na = ca / p.hw4;
    let nb = cb / p.hw4;
    let xa0 = na * p.red_c * p.hw4 + (ca - na * p.hw4);
    let xb0 = nb * p.red_c * p.hw4 + (cb - nb * p.hw4);
    let oc0 = wg.x * 16u;
    let ocp4 = p.out_c / 4u;
    let s8 = sl % 8u;
    var acc: Tile;
    var l: W4;
    for (var rc = 0u; rc < p.red_c; rc++) {
        let k = rc % 8u;
        var c: W4;
        if (W_LOADS == 1u) {
            if (k == 0u) { l = w_row(min(rc + s8, p.red_c - 1u), ocp4, oc0 / 4u); }
            c = shuffled(l, sl - s8 + k);
        } else {
            let f = f32(rc) * 1e-3;
            let d = vec4(0.0, 0.1, 0.2, 0.3);
            c = W4(vec4(f) + d, vec4(f + 1.0) + d, vec4(f + 2.0) + d, vec4(f + 3.0) + d);
        }
        let xa = x_at(xa0 + rc * p.hw4, rc);
        let xb = x_at(xb0 + rc * p.hw4, rc);
        acc[0] += outer4(c.w0, xa);
        acc[1] += outer4(c.w0, xb);
        acc[2] += outer4(c.w1, xa);
        acc[3] += outer4(c.w1, xb);
        acc[4] += outer4(c.w2, xa);
        acc[5] += outer4(c.w2, xb);
        acc[6] += outer4(c.w3, xa);
        acc[7] += outer4(c.w3, xb);
    }
    if (ga < ngrp) {
        let o = (na * p.out_c + oc0) * p.hw4 + (ga - na * p.hw4);
        for (var j = 0u; j < 4u; j++) {
            out[o + j * p.hw4] = acc[0][j];
            out[o + (4u + j) * p.hw4] = acc[2][j];
            out[o + (8u + j) * p.hw4] = acc[4][j];
            out[o + (12u + j) * p.hw4] = acc[6][j];
        }
    }
    if (gb < ngrp) {
        let o = (nb * p.out_c + oc0) * p.hw4 + (gb - nb * p.hw4);
        for (var j = 0u; j < 4u; j++) {
            out[o + j * p.hw4] = acc[1][j];
            out[o + (4u + j) * p.hw4] = acc[3][j];
            out[o + (8u + j) * p.hw4] = acc[5][j];
            out[o + (12u + j) * p.hw4] = acc[7][j];
        }
    }
}
