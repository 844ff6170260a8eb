//   gemm_v4:  C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n]), A k-major, B n-major.
//   gemm_dot: C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n]), A and B k-contiguous.
//
// linear helpers whose loads are the same for every lane of a SIMD row, in their plain form
// (one load per value), and the entry point that uses them; linear_subgroup.wgsl has the
// subgroup form. Appended to linear.wgsl in the plain module.

// gemm_v4: A's 16 rows at k (`l` and `lane` are not needed here).
fn g4_a_at(l: ptr<function, ARows>, k: u32, q: vec4<u32>, lane: u32) -> ARows {
    return g4_load_a(k, q);
}

// One invocation per TM x TN tile; a workgroup is WG_N x WG_M tiles.
@compute @workgroup_size(WG_N, WG_M)
fn gemm_v4(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m0 = gid.y * TM;
    let n0 = gid.x * TN;
    if (m0 >= p.m || n0 >= p.n) { return; }
    g4_body(m0, n0, 0u);
}

// gemm_dot: A at rows m0 .. m0 + 15 (clamped) and k .. k + 3 (`lane` is not needed here).
fn gd_rows(m0: u32, k: u32, lane: u32) -> Rows16 {
    var g: Rows16;
    for (var cb = 0u; cb < 4u; cb++) {
        let m = m0 + 4u * cb;
        g[cb] = mat4x4<f32>(gd_a[gd_a_at(m, k)], gd_a[gd_a_at(m + 1u, k)],
                            gd_a[gd_a_at(m + 2u, k)], gd_a[gd_a_at(m + 3u, k)]);
    }
    return g;
}

// One invocation per 16 x 8 block of C; workgroup_id.y picks the 16 rows.
@compute @workgroup_size(WG_DOT)
fn gemm_dot(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    gd_body(wg.y * 16u, (wg.x * WG_DOT + li) * 8u, 0u);
}
