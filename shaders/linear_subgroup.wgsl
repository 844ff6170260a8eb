//   gemm_v4_sg: C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n]), A k-major, B n-major.
//
// Subgroup variant of gemm_v4 (built on adapters with subgroups of at least 8 invocations;
// linear_uniform_loads.wgsl has the plain form).
// A's rows are the same for every lane of a workgroup (one TM-row block per workgroup,
// lanes along n), so instead of every lane loading them at every k, lane s of each group of
// 8 loads them at k0 + s % 8 once per 8 k, and k takes them from lane k % 8 of its group with
// subgroupShuffle (as conv2d's conv1x1_sg does with its weights). On lavapipe a
// workgroup-uniform storage load costs as much as a per-lane one.

fn g4_sh(r: ARows, src: u32) -> ARows {
    return ARows(subgroupShuffle(r.a0, src), subgroupShuffle(r.a1, src),
                 subgroupShuffle(r.a2, src), subgroupShuffle(r.a3, src));
}

// gemm_v4_sg: A's 16 rows at k, shared over groups of 8 k (k below the last multiple of 8
// of K; g4_body loads the rest directly).
fn g4_a_at(l: ptr<function, ARows>, k: u32, q: vec4<u32>, sl: u32) -> ARows {
    let s8 = sl % 8u;
    let j = k % 8u;
    if (j == 0u) { *l = g4_load_a(k + s8, q); }
    return g4_sh(*l, sl - s8 + j);
}

// One workgroup per TM-row block (workgroup_id.y) and WG_N * WG_M tiles along n.
@compute @workgroup_size(WG_N * WG_M)
fn gemm_v4_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) sl: u32) {
    g4_body(wg.y * TM, (wg.x * WG_N * WG_M + li) * TN, sl);
}
