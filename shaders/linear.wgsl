// Linear layer and matrix products.
//   forward:  y[n, o]    = sum_i x[n, i] * w[o, i] + b[o]
//   backward: d_x[n, i] += sum_o d_y[n, o] * w[o, i]
//             d_w[o, i] += sum_n d_y[n, o] * x[n, i]
//             d_b[o]    += sum_n d_y[n, o]
// The three products are one register-tiled kernel family computing
//   C[m, n] (+)= sum_k A(m, k) * B(k, n) (+ bias[n])
// with A(m, k) = a[a_off + m * a_sm + k * a_sk], B(k, n) = b[b_off + k * b_sk + n * b_sn]
// and C(m, n) = c[c_off + m * c_sm + n]. The sum over k runs in order k = 0, 1, ..., K-1 in
// f32 (no atomics, no split-K), so results are bit-reproducible.
//
// One invocation owns a TM x TN tile of C (TM rows, TN columns, TN a multiple of 4); a
// workgroup is WG_N x WG_M invocations (x along n). Per k an invocation loads TM values of
// A and TN values of B and does TM * TN multiply-adds: on lavapipe every storage load is a
// per-lane gather, so the ratio of FMAs to loads is what sets the speed.
//   gemm_v4: A stored k-major (a_sm == 1) and B stored n-major (b_sn == 1), read as vec4
//            along m and n (M, N, offsets and strides multiples of 4). Used by d_w = d_y^T x
//            and by `matmul` (after transposing a). Its entry point lives in
//            linear_uniform_loads.wgsl; linear_subgroup.wgsl has gemm_v4_sg, which shares
//            A's loads among 8 lanes (see there).
//   gemm_dot: A and B both stored k-contiguous (a_sk == b_sk == 1), read as vec4 along k,
//            4-term dot products per accumulator update. Used by the forward (x W^T) and
//            by `matmul` (after transposing b); see its section.
//   gemm:    any strides, scalar loads. Used by forward and d_x (d_y W) when the others
//            do not apply.
// Rows/columns past the edge load a clamped (valid) address and are never stored.

override WG_M: u32 = 8;   // invocations per workgroup along m
override WG_N: u32 = 8;   // invocations per workgroup along n
override TM: u32 = 16;    // rows of C per invocation: 4, 8, 12 or 16
override TN: u32 = 8;     // columns of C per invocation: 4 or 8
const FLAG_ACCUMULATE: u32 = 1u; // C += result instead of C = result
const FLAG_BIAS: u32 = 2u;       // result += bias[bias_off + n]

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    a_sm: u32,
    a_sk: u32,
    b_off: u32,
    b_sk: u32,
    b_sn: u32,
    c_off: u32,
    c_sm: u32,
    bias_off: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The accumulator tile of one invocation is up to 4 x 2 blocks of 4 x 4: block (bm, bn) is
// acc[2 * bm + bn]; its column r holds C(m0 + 4 bm + r, n0 + 4 bn .. + 4). Blocks beyond
// TM / TN are removed at pipeline creation (their guards are override constants). All
// indices into `acc` are constants so the tile stays in registers.
alias Acc = array<mat4x4<f32>, 8>;

// a.x .. a.w: A at 4 consecutive rows; b: B at 4 consecutive columns (one k).
fn outer(a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(b * a.x, b * a.y, b * a.z, b * a.w);
}

// acc += A(rows, k) B(k, cols) for one k: a0..a3 cover rows 0-3 .. 12-15, b0/b1 columns 0-3/4-7.
fn mac(acc: ptr<function, Acc>, a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32>,
       b0: vec4<f32>, b1: vec4<f32>) {
    (*acc)[0] += outer(a0, b0);
    if (TN > 4u) { (*acc)[1] += outer(a0, b1); }
    if (TM > 4u) {
        (*acc)[2] += outer(a1, b0);
        if (TN > 4u) { (*acc)[3] += outer(a1, b1); }
    }
    if (TM > 8u) {
        (*acc)[4] += outer(a2, b0);
        if (TN > 4u) { (*acc)[5] += outer(a2, b1); }
    }
    if (TM > 12u) {
        (*acc)[6] += outer(a3, b0);
        if (TN > 4u) { (*acc)[7] += outer(a3, b1); }
    }
}

// The value C(m, n) gets from the finished tile's entry `v`: bias added, C overwritten or
// accumulated; `old` is C's current value (read only when accumulating).
fn epilogue(v: f32, bias: f32, old: f32) -> f32 {
    var r = v;
    if ((p.flags & FLAG_BIAS) != 0u) { r += bias; }
    if ((p.flags & FLAG_ACCUMULATE) != 0u) { r = old + r; }
    return r;
}

// ---- gemm: arbitrary strides, scalar loads --------------------------------------------
@group(0) @binding(1) var<storage, read> gs_a: array<f32>;         // A (M, K) via a_off/a_sm/a_sk
@group(0) @binding(2) var<storage, read> gs_b: array<f32>;         // B (K, N) via b_off/b_sk/b_sn
@group(0) @binding(3) var<storage, read> gs_bias: array<f32>;      // (N) at bias_off (if FLAG_BIAS)
@group(0) @binding(4) var<storage, read_write> gs_c: array<f32>;   // C (M, N) via c_off/c_sm

// Buffer offset of A(min(m0 + i, M - 1), 0): rows past the edge re-read the last row.
fn gs_row(m0: u32, i: u32) -> u32 {
    return p.a_off + min(m0 + i, p.m - 1u) * p.a_sm;
}
fn gs_col(n0: u32, j: u32) -> u32 {
    return p.b_off + min(n0 + j, p.n - 1u) * p.b_sn;
}
fn gs_a4(r: vec4<u32>, ak: u32) -> vec4<f32> {
    return vec4<f32>(gs_a[r.x + ak], gs_a[r.y + ak], gs_a[r.z + ak], gs_a[r.w + ak]);
}
fn gs_b4(c: vec4<u32>, bk: u32) -> vec4<f32> {
    return vec4<f32>(gs_b[c.x + bk], gs_b[c.y + bk], gs_b[c.z + bk], gs_b[c.w + bk]);
}
fn gs_store_block(blk: mat4x4<f32>, m: u32, n: u32) {
    var b = blk;
    for (var r = 0u; r < 4u; r++) {
        if (m + r >= p.m) { return; }
        for (var j = 0u; j < 4u; j++) {
            if (n + j >= p.n) { break; }
            let ci = p.c_off + (m + r) * p.c_sm + n + j;
            var old = 0.0;
            if ((p.flags & FLAG_ACCUMULATE) != 0u) { old = gs_c[ci]; }
            var bias = 0.0;
            if ((p.flags & FLAG_BIAS) != 0u) { bias = gs_bias[p.bias_off + n + j]; }
            gs_c[ci] = epilogue(b[r][j], bias, old);
        }
    }
}

@compute @workgroup_size(WG_N, WG_M)
fn gemm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let m0 = gid.y * TM;
    let n0 = gid.x * TN;
    if (m0 >= p.m || n0 >= p.n) { return; }
    let r0 = vec4<u32>(gs_row(m0, 0u), gs_row(m0, 1u), gs_row(m0, 2u), gs_row(m0, 3u));
    let r1 = vec4<u32>(gs_row(m0, 4u), gs_row(m0, 5u), gs_row(m0, 6u), gs_row(m0, 7u));
    let r2 = vec4<u32>(gs_row(m0, 8u), gs_row(m0, 9u), gs_row(m0, 10u), gs_row(m0, 11u));
    let r3 = vec4<u32>(gs_row(m0, 12u), gs_row(m0, 13u), gs_row(m0, 14u), gs_row(m0, 15u));
    let c0 = vec4<u32>(gs_col(n0, 0u), gs_col(n0, 1u), gs_col(n0, 2u), gs_col(n0, 3u));
    let c1 = vec4<u32>(gs_col(n0, 4u), gs_col(n0, 5u), gs_col(n0, 6u), gs_col(n0, 7u));
    var acc: Acc;
    for (var k = 0u; k < p.k; k++) {
        let ak = k * p.a_sk;
        let bk = k * p.b_sk;
        var a1 = vec4<f32>();
        var a2 = vec4<f32>();
        var a3 = vec4<f32>();
        var b1 = vec4<f32>();
        if (TM > 4u) { a1 = gs_a4(r1, ak); }
        if (TM > 8u) { a2 = gs_a4(r2, ak); }
        if (TM > 12u) { a3 = gs_a4(r3, ak); }
        if (TN > 4u) { b1 = gs_b4(c1, bk); }
        mac(&acc, gs_a4(r0, ak), a1, a2, a3, gs_b4(c0, bk), b1);
    }
    gs_store_block(acc[0], m0, n0);
    if (TN > 4u) { gs_store_block(acc[1], m0, n0 + 4u); }
    if (TM > 4u) {
        gs_store_block(acc[2], m0 + 4u, n0);
        if (TN > 4u) { gs_store_block(acc[3], m0 + 4u, n0 + 4u); }
    }
    if (TM > 8u) {
        gs_store_block(acc[4], m0 + 8u, n0);
        if (TN > 4u) { gs_store_block(acc[5], m0 + 8u, n0 + 4u); }
    }
    if (TM > 12u) {
        gs_store_block(acc[6], m0 + 12u, n0);
        if (TN > 4u) { gs_store_block(acc[7], m0 + 12u, n0 + 4u); }
    }
}

// ---- gemm_v4: A k-major, B n-major, vec4 loads -----------------------------------------
@group(0) @binding(1) var<storage, read> g4_a: array<vec4<f32>>;   // A^T (K, M): A(m, k) at a_off + k*a_sk + m
@group(0) @binding(2) var<storage, read> g4_b: array<vec4<f32>>;   // B (K, N): B(k, n) at b_off + k*b_sk + n
@group(0) @binding(3) var<storage, read> g4_bias: array<f32>;      // (N) at bias_off (if FLAG_BIAS)
@group(0) @binding(4) var<storage, read_write> g4_c: array<f32>;   // C (M, N) via c_off/c_sm

fn g4_store_block(blk: mat4x4<f32>, m: u32, n: u32) {
    var b = blk;
    for (var r = 0u; r < 4u; r++) {
        if (m + r >= p.m) { return; }
        for (var j = 0u; j < 4u; j++) {
            if (n + j >= p.n) { break; }
            let ci = p.c_off + (m + r) * p.c_sm + n + j;
            var old = 0.0;
            if ((p.flags & FLAG_ACCUMULATE) != 0u) { old = g4_c[ci]; }
            var bias = 0.0;
            if ((p.flags & FLAG_BIAS) != 0u) { bias = g4_bias[p.bias_off + n + j]; }
            g4_c[ci] = epilogue(b[r][j], bias, old);
        }
    }
}

// The 16 rows of A (m0 .. m0 + 15) at one k, as vec4s along m (TM guards as in `mac`).
struct ARows {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
}

// A at k for the tile's row groups q (vec4 indices along m, clamped).
fn g4_load_a(k: u32, q: vec4<u32>) -> ARows {
    let ak = (p.a_off + k * p.a_sk) / 4u;
    var r = ARows(g4_a[ak + q.x], vec4(0.0), vec4(0.0), vec4(0.0));
    if (TM > 4u) { r.a1 = g4_a[ak + q.y]; }
    if (TM > 8u) { r.a2 = g4_a[ak + q.z]; }
    if (TM > 12u) { r.a3 = g4_a[ak + q.w]; }
    return r;
}

// acc += A(rows, k) B(k, the tile's columns): B's two column groups s0, s1 at k.
fn g4_step(acc: ptr<function, Acc>, k: u32, s0: u32, s1: u32, a: ARows) {
    let bk = (p.b_off + k * p.b_sk) / 4u;
    var b1 = vec4<f32>();
    if (TN > 4u) { b1 = g4_b[bk + s1]; }
    mac(acc, a.a0, a.a1, a.a2, a.a3, g4_b[bk + s0], b1);
}

// The body of the gemm_v4 entry points: the TM x TN tile at (m0, n0). Loads are clamped,
// stores guarded, so lanes past the edge run along (the subgroup variant needs every lane).
// A's rows at k come from g4_a_at (linear_uniform_loads.wgsl or linear_subgroup.wgsl;
// `lane` = the lane's subgroup_invocation_id, `l` = state kept across k).
fn g4_body(m0: u32, n0: u32, lane: u32) {
    // vec4 indices of this tile's row and column groups, clamped to the last valid vec4.
    let am = p.m / 4u - 1u;
    let bn = p.n / 4u - 1u;
    let q = min(vec4(m0 / 4u) + vec4(0u, 1u, 2u, 3u), vec4(am));
    let s0 = min(n0 / 4u, bn);
    let s1 = min(n0 / 4u + 1u, bn);
    // k below the last multiple of 8 takes A from g4_a_at (which may share loads across
    // groups of 8 lanes), the rest loads it directly: two loops, so the loop body has no
    // branch on which case applies.
    let k8 = p.k / 8u * 8u;
    var acc: Acc;
    var l: ARows;
    for (var k = 0u; k < k8; k++) {
        g4_step(&acc, k, s0, s1, g4_a_at(&l, k, q, lane));
    }
    for (var k = k8; k < p.k; k++) {
        g4_step(&acc, k, s0, s1, g4_load_a(k, q));
    }
    g4_store_block(acc[0], m0, n0);
    if (TN > 4u) { g4_store_block(acc[1], m0, n0 + 4u); }
    if (TM > 4u) {
        g4_store_block(acc[2], m0 + 4u, n0);
        if (TN > 4u) { g4_store_block(acc[3], m0 + 4u, n0 + 4u); }
    }
    if (TM > 8u) {
        g4_store_block(acc[4], m0 + 8u, n0);
        if (TN > 4u) { g4_store_block(acc[5], m0 + 8u, n0 + 4u); }
    }
    if (TM > 12u) {
        g4_store_block(acc[6], m0 + 12u, n0);
        if (TN > 4u) { g4_store_block(acc[7], m0 + 12u, n0 + 4u); }
    }
}

// ---- gemm_dot: A and B both k-contiguous, 4-term dot products -----------------------
// A(m, k) = a[a_off + m * a_sm + k] and B(k, n) = b[b_off + n * b_sn + k] (a_sk = b_sk = 1;
// K, a_sm, b_sn and both offsets multiples of 4), read as vec4 along k. Used by `matmul`
// (after transposing b) and by the linear forward x · Wᵀ. One invocation owns 8 columns of C
// (lane l of workgroup x: n0 = 8 (x * WG_DOT + l)) x the 16 rows of its workgroup
// (m0 = 16 workgroup_id.y). Per 4 k it loads B at its 8 columns (8 per-lane vec4 loads) and
// A at the 16 rows (which are the same for every lane: gd_rows in linear_uniform_loads.wgsl /
// linear_subgroup.wgsl), and adds x_j * G_cb, 4 dot products of 4 terms, to acc[4 j + cb]:
// each accumulator is updated once per 4 multiply-adds, where gemm_v4 updates it once per
// multiply-add (on lavapipe the tile is spilled, so every update is a load and a store, and
// a masked merge). The sum over k runs in order in groups of 4.
override WG_DOT: u32 = 64;

@group(0) @binding(1) var<storage, read> gd_a: array<vec4<f32>>;   // A (M, K) via a_off/a_sm
@group(0) @binding(2) var<storage, read> gd_b: array<vec4<f32>>;   // Bᵀ (N, K) via b_off/b_sn
@group(0) @binding(3) var<storage, read> gd_bias: array<f32>;      // (N) at bias_off (if FLAG_BIAS)
@group(0) @binding(4) var<storage, read_write> gd_c: array<f32>;   // C (M, N) via c_off/c_sm

// A at rows m0 + 4 cb + c and k .. k + 3: Rows16[cb][c].
alias Rows16 = array<mat4x4<f32>, 4>;
// acc[4 j + cb][c] = C(m0 + 4 cb + c, n0 + j).
alias DotAcc = array<vec4<f32>, 32>;

// vec4 index of A(min(m, M - 1), k): rows past the edge re-read the last row.
fn gd_a_at(m: u32, k: u32) -> u32 {
    return (p.a_off + min(m, p.m - 1u) * p.a_sm + k) / 4u;
}

// vec4 index of B(0, min(n, N - 1)).
fn gd_b_at(n: u32) -> u32 {
    return (p.b_off + min(n, p.n - 1u) * p.b_sn) / 4u;
}

// acc[4 j + cb] += x * G_cb: column n0 + j (x = B at 4 k) against the 16 rows.
fn gd_mac(acc: ptr<function, DotAcc>, j: u32, x: vec4<f32>, g: Rows16) {
    (*acc)[4u * j] += x * g[0];
    (*acc)[4u * j + 1u] += x * g[1];
    (*acc)[4u * j + 2u] += x * g[2];
    (*acc)[4u * j + 3u] += x * g[3];
}

// C(m .. m + 3, n) from v (rows past M and columns past N are not stored).
fn gd_store(v: vec4<f32>, m: u32, n: u32) {
    if (n >= p.n) { return; }
    for (var c = 0u; c < 4u; c++) {
        if (m + c >= p.m) { return; }
        let ci = p.c_off + (m + c) * p.c_sm + n;
        var old = 0.0;
        if ((p.flags & FLAG_ACCUMULATE) != 0u) { old = gd_c[ci]; }
        var bias = 0.0;
        if ((p.flags & FLAG_BIAS) != 0u) { bias = gd_bias[p.bias_off + n]; }
        gd_c[ci] = epilogue(v[c], bias, old);
    }
}

// The body of the gemm_dot entry points (`lane` = subgroup_invocation_id, 0 in the plain
// module). Loads are clamped and stores guarded, so every lane runs the loop.
fn gd_body(m0: u32, n0: u32, lane: u32) {
    let b0 = gd_b_at(n0);
    let b1 = gd_b_at(n0 + 1u);
    let b2 = gd_b_at(n0 + 2u);
    let b3 = gd_b_at(n0 + 3u);
    let b4 = gd_b_at(n0 + 4u);
    let b5 = gd_b_at(n0 + 5u);
    let b6 = gd_b_at(n0 + 6u);
    let b7 = gd_b_at(n0 + 7u);
    var acc: DotAcc;
    for (var q = 0u; q < p.k / 4u; q++) {
        let g = gd_rows(m0, 4u * q, lane);
        gd_mac(&acc, 0u, gd_b[b0 + q], g);
        gd_mac(&acc, 1u, gd_b[b1 + q], g);
        gd_mac(&acc, 2u, gd_b[b2 + q], g);
        gd_mac(&acc, 3u, gd_b[b3 + q], g);
        gd_mac(&acc, 4u, gd_b[b4 + q], g);
        gd_mac(&acc, 5u, gd_b[b5 + q], g);
        gd_mac(&acc, 6u, gd_b[b6 + q], g);
        gd_mac(&acc, 7u, gd_b[b7 + q], g);
    }
    for (var j = 0u; j < 8u; j++) {
        gd_store(acc[4u * j], m0, n0 + j);
        gd_store(acc[4u * j + 1u], m0 + 4u, n0 + j);
        gd_store(acc[4u * j + 2u], m0 + 8u, n0 + j);
        gd_store(acc[4u * j + 3u], m0 + 12u, n0 + j);
    }
}

// ---- transpose: out (cols, rows) = in (rows, cols)^T, for `matmul` --------------------
// Uses m = rows, n = cols, a_off (in offset), c_off (out offset).
override WG: u32 = 256;

// transpose: one invocation per element (any sizes).
@group(0) @binding(1) var<storage, read> tr_in: array<f32>;        // (rows, cols) at a_off
@group(0) @binding(2) var<storage, read_write> tr_out: array<f32>; // (cols, rows) at c_off

@compute @workgroup_size(WG)
fn transpose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.m * p.n) { return; }
    // e walks the output row-major, so writes are contiguous.
    let col = e / p.m;
    let row = e - col * p.m;
    tr_out[p.c_off + e] = tr_in[p.a_off + row * p.n + col];
}

// transpose_v4: one invocation per 4 x 4 block, 4 vec4 loads and 4 vec4 stores (rows, cols
// and both offsets multiples of 4).
@group(0) @binding(1) var<storage, read> t4_in: array<vec4<f32>>;        // (rows, cols) at a_off
@group(0) @binding(2) var<storage, read_write> t4_out: array<vec4<f32>>; // (cols, rows) at c_off

@compute @workgroup_size(WG)
fn transpose_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let rows4 = p.m / 4u;
    let cols4 = p.n / 4u;
    let blk = linear_id(wg, nwg, li, WG);
    if (blk >= rows4 * cols4) { return; }
    let j4 = blk / rows4;          // block column (output block row)
    let i4 = blk - j4 * rows4;     // block row
    let src = p.a_off / 4u + 4u * i4 * cols4 + j4;
    let r0 = t4_in[src];
    let r1 = t4_in[src + cols4];
    let r2 = t4_in[src + 2u * cols4];
    let r3 = t4_in[src + 3u * cols4];
    let dst = p.c_off / 4u + 4u * j4 * rows4 + i4;
    t4_out[dst] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
    t4_out[dst + rows4] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
    t4_out[dst + 2u * rows4] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
    t4_out[dst + 3u * rows4] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
}

// ---- bias_backward: d_b[o] += sum_n d_y[n, o] (n in order) -----------------------------
// Uses m = N, n = O, a_off (d_y offset), c_off (d_b offset). One invocation per o.
@group(0) @binding(1) var<storage, read> bb_d_y: array<f32>;       // (N, O) at a_off
@group(0) @binding(2) var<storage, read_write> bb_d_b: array<f32>; // (O) at c_off

@compute @workgroup_size(WG)
fn bias_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let o = linear_id(wg, nwg, li, WG);
    if (o >= p.n) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.m; r++) { s += bb_d_y[p.a_off + r * p.n + o]; }
    bb_d_b[p.c_off + o] += s;
}
