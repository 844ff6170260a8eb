//   conv1x1(_sg):  out[n,oc,q] (= b[oc] +) / (+=) sum_rc w[oc,rc] * inp'[n,rc,q]
//   conv3x3(_sg):  out[n,oc,h,w] (= b[oc] +) / (+=) sum_{rc,i,j} w[oc,rc,i,j] * inp'[n,rc,h+i-1,w+j-1]
//   backward_weight_rows(_sg), backward_weight_dot(_sg), backward_weight_strided(_sg):
//                  part[chunk, co, col] = sum_{pixels of the chunk} d_y[n,co,q] * x'[n, col's input at q]
//
// Subgroup variants of conv2d's fast paths: the helpers that load a workgroup-uniform
// operand (weights, or d_y in the weight gradients) and the *_sg entry points. Appended to
// the other conv2d files (same formulas, uniforms, bindings, dispatch, register tiles and stores) in the
// module built on adapters with subgroup operations and subgroups of at least 8 invocations;
// uniform_loads.wgsl has the plain helpers. `lane` = subgroup_invocation_id.
//
// Why: the weights are the same for every lane of a workgroup, but on lavapipe a
// workgroup-uniform storage load costs about as much as a per-lane one (a loop over the 8
// lanes of a SIMD row), and the weight loads were most of the loads of conv1x1 / conv3x3.
// Here lane s of every group of 8 loads the weights of summed channel rc0 + (s % 8) once per
// 8 channels (one load where there were eight), and for channel rc the weights come from
// lane rc % 8 of the lane's group through subgroupShuffle (one vpermd per 32-bit component
// on lavapipe). conv1x1 shares its prologue's per-channel scale and shift the same way.
// The loop is not unrolled: on lavapipe an 8-fold unrolled body (with a constant-lane
// subgroupBroadcast) ran 1.6x slower than this rolled loop. Indices beyond the last
// multiple of 8 load directly.

// The weights lane `src` holds (every lane of the subgroup takes part).
fn sh4(w: W4, src: u32) -> W4 {
    return W4(subgroupShuffle(w.w0, src), subgroupShuffle(w.w1, src),
              subgroupShuffle(w.w2, src), subgroupShuffle(w.w3, src));
}

// conv1x1: the weights (and prologue coefficients) of summed channel rc, rc below the last
// multiple of 8 of the summed channels. Every 8th channel, lane s loads channel rc + s % 8
// into `l`; channel rc then comes from lane rc % 8 of the lane's group of 8.
fn conv1x1_weights(l: ptr<function, C1Coef>, rc: u32, ocp4: u32, os: vec4<u32>, lane: u32) -> C1Coef {
    let s8 = lane % 8u;
    let k = rc % 8u;
    if (k == 0u) { *l = conv1x1_coef(rc + s8, ocp4, os); }
    let src = lane - s8 + k;
    var c = C1Coef(sh4((*l).w, src), (*l).pro);
    if (PROLOGUE) { c.pro = subgroupShuffle((*l).pro, src); }
    return c;
}

// conv3x3: the same for the 12 weight vec4s of summed channel rc, kernel row ti.
fn conv3x3_weights(l: ptr<function, W12>, rc: u32, ti: u32, ocp4: u32, os: vec4<u32>,
              lane: u32) -> W12 {
    let s8 = lane % 8u;
    let k = rc % 8u;
    if (k == 0u) { *l = conv3x3_load(rc + s8, ti, ocp4, os); }
    let src = lane - s8 + k;
    return W12(sh4((*l).t0, src), sh4((*l).t1, src), sh4((*l).t2, src));
}

// forward_tiled: the weights of reduction step r, r below the last multiple of 8 of the
// steps: every 8th step lane s loads step r + s % 8, and step r comes from lane r % 8.
fn ft_weights(l: ptr<function, W4>, r: u32, ocp4: u32, os: vec4<u32>, lane: u32) -> W4 {
    let s8 = lane % 8u;
    let j = r % 8u;
    if (j == 0u) { *l = conv1x1_load(ft_row(r + s8), ocp4, os); }
    return sh4(*l, lane - s8 + j);
}

// backward_weight_strided: d_y at output pixel k for the tile's channel blocks, k below
// k0 plus the last multiple of 8 of the chunk's length. Every 8th pixel, lane s loads pixel
// k + s % 8 into `l`; pixel k then comes from lane (k - k0) % 8 of the lane's group of 8.
fn bs_dy_at(l: ptr<function, W4>, k: u32, k0: u32, cop4: u32, os: vec4<u32>, lane: u32) -> W4 {
    let s8 = lane % 8u;
    let j = (k - k0) % 8u;
    if (j == 0u) { *l = bs_load_dy(k + s8, cop4, os); }
    return sh4(*l, lane - s8 + j);
}

// backward_weight_rows: d_y of channels co0 .. co0 + 15 (clamped) at one pixel group: lane
// s % 8 loads channels co0 + s % 8 and co0 + 8 + s % 8; channel c then comes from lane
// c % 8 of the group (2 loads instead of 16).
fn rows_dy16(yb: u32, co0: u32, hw4: u32, lane: u32) -> Dy16 {
    let s8 = lane % 8u;
    let a = rows_d_y[yb + min(co0 + s8, weight_params.cout - 1u) * hw4];
    var b = vec4(0.0);
    if (CH_TILE > 8u) { b = rows_d_y[yb + min(co0 + 8u + s8, weight_params.cout - 1u) * hw4]; }
    let base = lane - s8;
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
fn conv1x1_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) lane: u32) {
    conv1x1_body(wg, nwg, li, lane);
}

@compute @workgroup_size(WG)
fn conv3x3_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) lane: u32) {
    conv3x3_body(wg, nwg, li, lane);
}

@compute @workgroup_size(WG)
fn backward_weight_rows_sg(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(local_invocation_index) li: u32,
                           @builtin(subgroup_invocation_id) lane: u32) {
    rows_body(wg, li, lane);
}


@compute @workgroup_size(WG)
fn backward_weight_dot_sg(@builtin(workgroup_id) wg: vec3<u32>,
                          @builtin(local_invocation_index) li: u32,
                          @builtin(subgroup_invocation_id) lane: u32) {
    bd_body(wg, li, lane);
}

@compute @workgroup_size(WG)
fn backward_weight_strided_sg(@builtin(workgroup_id) wg: vec3<u32>,
                              @builtin(local_invocation_index) li: u32,
                              @builtin(subgroup_invocation_id) lane: u32) {
    bs_body(wg, li, lane);
}

@compute @workgroup_size(WG)
fn forward_tiled_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32,
                    @builtin(subgroup_invocation_id) lane: u32) {
    ft_body(wg, nwg, li, lane);
}
