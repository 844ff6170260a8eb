//   gemm_v4_sg:  C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n]), A k-major, B n-major.
//   gemm_dot_sg: C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n]), A and B k-contiguous.
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
fn g4_a_at(l: ptr<function, ARows>, k: u32, q: vec4<u32>, lane: u32) -> ARows {
    let s8 = lane % 8u;
    let j = k % 8u;
    if (j == 0u) { *l = g4_load_a(k + s8, q); }
    return g4_sh(*l, lane - s8 + j);
}

// One workgroup per TM-row block (workgroup_id.y) and WG_N * WG_M tiles along n.
@compute @workgroup_size(WG_N * WG_M)
fn gemm_v4_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
              @builtin(subgroup_invocation_id) lane: u32) {
    g4_body(wg.y * TM, (wg.x * WG_N * WG_M + li) * TN, lane);
}

// gemm_dot_sg: A at rows m0 .. m0 + 15 (clamped) and k .. k + 3. The rows are the same for
// every lane, so lane s % 8 of each group of 8 loads rows m0 + s % 8 and m0 + 8 + s % 8 and
// row r comes from lane r % 8 of the group (2 loads instead of 16).
fn gd_rows(m0: u32, k: u32, lane: u32) -> Rows16 {
    let s8 = lane % 8u;
    let a = gd_a[gd_a_at(m0 + s8, k)];
    let b = gd_a[gd_a_at(m0 + 8u + s8, k)];
    let base = lane - s8;
    var g: Rows16;
    g[0] = mat4x4<f32>(subgroupShuffle(a, base), subgroupShuffle(a, base + 1u),
                       subgroupShuffle(a, base + 2u), subgroupShuffle(a, base + 3u));
    g[1] = mat4x4<f32>(subgroupShuffle(a, base + 4u), subgroupShuffle(a, base + 5u),
                       subgroupShuffle(a, base + 6u), subgroupShuffle(a, base + 7u));
    g[2] = mat4x4<f32>(subgroupShuffle(b, base), subgroupShuffle(b, base + 1u),
                       subgroupShuffle(b, base + 2u), subgroupShuffle(b, base + 3u));
    g[3] = mat4x4<f32>(subgroupShuffle(b, base + 4u), subgroupShuffle(b, base + 5u),
                       subgroupShuffle(b, base + 6u), subgroupShuffle(b, base + 7u));
    return g;
}

// One invocation per 16 x 8 block of C; workgroup_id.y picks the 16 rows.
@compute @workgroup_size(WG_DOT)
fn gemm_dot_sg(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32,
               @builtin(subgroup_invocation_id) lane: u32) {
    gd_body(wg.y * 16u, (wg.x * WG_DOT + li) * 8u, lane);
}
