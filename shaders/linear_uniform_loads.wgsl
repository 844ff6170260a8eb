//   gemm_v4: C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n]), A k-major, B n-major.
//
// linear helpers whose loads are the same for every lane of a SIMD row, in their plain form
// (one load per value), and the entry point that uses them; linear_subgroup.wgsl has the
// subgroup form. Appended to linear.wgsl in the plain module.

// gemm_v4: A's 16 rows at k (`l` and `sl` are not needed here).
fn g4_a_at(l: ptr<function, ARows>, k: u32, q: vec4<u32>, sl: u32) -> ARows {
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
