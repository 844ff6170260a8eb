//   conv1x1(_sg):  out[n,oc,q] (= b[oc] +) / (+=) sum_rc w[oc,rc] * inp'[n,rc,q]
//   conv3x3(_sg):  out[n,oc,h,w] (= b[oc] +) / (+=) sum_{rc,i,j} w[oc,rc,i,j] * inp'[n,rc,h+i-1,w+j-1]
//   backward_weight_rows(_sg), backward_weight_dot(_sg), backward_weight_strided(_sg):
//                  part[chunk, co, col] = sum_{pixels of the chunk} d_y[n,co,q] * x'[n, col's input at q]
//
// conv2d helpers whose loads are the same for every lane of a workgroup, in their plain
// form (one load per value), and the plain entry points that use them; subgroup.wgsl
// defines the same helpers with subgroup operations and the *_sg entry points. Appended to
// the other conv2d files in the plain module. `l` and `lane` (state kept across the reduction, the
// lane's subgroup index) are not needed here.

// conv1x1: the weights (and prologue coefficients) of summed channel rc.
fn conv1x1_weights(l: ptr<function, C1Coef>, rc: u32, ocp4: u32, os: vec4<u32>, lane: u32) -> C1Coef {
    return conv1x1_coef(rc, ocp4, os);
}

// conv3x3: the weights of summed channel rc, kernel row ti.
fn conv3x3_weights(l: ptr<function, W12>, rc: u32, ti: u32, ocp4: u32, os: vec4<u32>,
              lane: u32) -> W12 {
    return conv3x3_load(rc, ti, ocp4, os);
}

// forward_tiled: the weights of reduction step r.
fn ft_weights(l: ptr<function, W4>, r: u32, ocp4: u32, os: vec4<u32>, lane: u32) -> W4 {
    return conv1x1_load(ft_row(r), ocp4, os);
}

// backward_weight_strided: d_y at output pixel k for the tile's channel blocks.
fn bs_dy_at(l: ptr<function, W4>, k: u32, k0: u32, cop4: u32, os: vec4<u32>, lane: u32) -> W4 {
    return bs_load_dy(k, cop4, os);
}

// backward_weight_rows: d_y of channels co0 .. co0 + 15 (clamped) at the pixel group at
// vec4 index yb + channel * hw4.
fn rows_dy16(yb: u32, co0: u32, hw4: u32, lane: u32) -> Dy16 {
    var g: Dy16;
    for (var cb = 0u; cb < 4u; cb++) {
        if (4u * cb < CH_TILE) {
            let c = min(vec4(co0 + 4u * cb) + vec4(0u, 1u, 2u, 3u), vec4(weight_params.cout - 1u)) * hw4;
            g[cb] = mat4x4<f32>(rows_d_y[yb + c.x], rows_d_y[yb + c.y], rows_d_y[yb + c.z], rows_d_y[yb + c.w]);
        }
    }
    return g;
}

@compute @workgroup_size(WG)
fn conv1x1(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    conv1x1_body(wg, nwg, li, 0u);
}

@compute @workgroup_size(WG)
fn conv3x3(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    conv3x3_body(wg, nwg, li, 0u);
}

@compute @workgroup_size(WG)
fn backward_weight_rows(@builtin(workgroup_id) wg: vec3<u32>,
                        @builtin(local_invocation_index) li: u32) {
    rows_body(wg, li, 0u);
}


@compute @workgroup_size(WG)
fn backward_weight_dot(@builtin(workgroup_id) wg: vec3<u32>,
                       @builtin(local_invocation_index) li: u32) {
    bd_body(wg, li, 0u);
}

@compute @workgroup_size(WG)
fn backward_weight_strided(@builtin(workgroup_id) wg: vec3<u32>,
                           @builtin(local_invocation_index) li: u32) {
    bs_body(wg, li, 0u);
}

@compute @workgroup_size(WG)
fn forward_tiled(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    ft_body(wg, nwg, li, 0u);
}
