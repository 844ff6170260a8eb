// 2-D average pooling, PyTorch semantics (floor mode, count_include_pad = true):
//   forward:  y[n,c,oh,ow] = (1 / K^2) * sum_{ky,kx < K} x[n,c, oh*S - P + ky, ow*S - P + kx]
//             (padded positions read 0; the divisor is always K^2)
//   backward: d_x[n,c,ih,iw] += (1 / K^2) * sum over the windows (oh,ow) that contain (ih,iw)
//             of d_y[n,c,oh,ow]          (gather form: no atomics, fixed summation order)
// Kernel size K, stride S and padding P are override constants (one pipeline per pooling
// config, so every loop below has a constant trip count); shapes come in the uniform.
// Grid: 1-D over (plane, chunk): workgroup `wid` works on plane wid / gx (plane = n * C + c),
// chunk wid % gx of it, so plane bases need no per-invocation division.
// Forward: one invocation = TW consecutive outputs of one output row; for each kernel row it
// loads the row span the TW windows cover once ((TW - 1) * S + K values) into registers.
// `forward4` loads that span as aligned vec4s (used when x's rows start on multiples of 4).
// Backward: one invocation = TW consecutive d_x elements of one input row; `backward4`
// reads and writes them as vec4s. Non-overlapping unpadded windows (K == S, P == 0, the
// DenseNet transition) load each d_y value once per invocation; other configs gather, per
// element, the <= ceil(K/S)^2 windows containing it.
// x/d_x and y/d_y may be channel-slice views (see View).

override WG: u32 = 64;
override K: u32 = 2;   // kernel size
override S: u32 = 2;   // stride
override P: u32 = 0;   // padding
override TW: u32 = 8;  // consecutive row elements per invocation (<= MAX_TW)
const MAX_TW: u32 = 16u;
const MAX_SPAN: u32 = 64u;  // >= (TW - 1) * S + K, checked by the launcher
const MAX_SPAN4: u32 = 17u; // >= (MAX_SPAN + 3) / 4 + 1

struct Params {
    x: View,       // geometry of x (forward) or d_x (backward)
    y: View,       // geometry of y (forward) or d_y (backward)
    h: u32,        // input height H
    w: u32,        // input width W
    oh: u32,       // output height OH
    ow: u32,       // output width OW
    segs: u32,     // row segments of TW per row: ceil(OW / TW) forward, ceil(W / TW) backward
    rows: u32,     // rows per plane: OH forward, H backward
    gx: u32,       // workgroups per plane: ceil(rows * segs / WG)
    planes: u32,   // N * C
    c: u32,        // channels C
    inv_area: f32, // 1 / K^2
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Where one invocation works: batch item, channel, and its row / first column.
struct Work {
    n: u32,
    c: u32,
    row: u32,
    col0: u32,
    ok: bool,
}

// Splits the folded workgroup index into (plane, invocation inside the plane) and the
// latter into (row, segment of TW).
fn work(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> Work {
    let wid = wg.x + wg.y * nwg.x;
    let plane = wid / p.gx;
    let id = (wid - plane * p.gx) * WG + li;
    let n = plane / p.c;
    let r = id / p.segs;
    let ok = plane < p.planes && id < p.rows * p.segs;
    return Work(n, plane - n * p.c, r, (id - r * p.segs) * TW, ok);
}

// forward bindings
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;        // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;  // (N, C, OH, OW) via p.y

// Adds kernel row ky of the TW windows starting at (ih0, iw0) to acc. Loop bodies live
// in helpers like this one so that their loops, all with constant trip counts, unroll into
// straight-line code with registers at constant indices whatever the caller's loop does.
fn forward_row(ky: u32, xb: u32, ih0: i32, iw0: i32, acc: ptr<function, array<f32, MAX_TW>>) {
    let ih = ih0 + i32(ky);
    let row_ok = ih >= 0 && ih < i32(p.h);
    let row = xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
    // The row span of all TW windows; out-of-image positions (padding) read 0.
    var v: array<f32, MAX_SPAN>;
    for (var e = 0u; e < (TW - 1u) * S + K; e++) {
        let iw = iw0 + i32(e);
        let ok = row_ok && iw >= 0 && iw < i32(p.w);
        v[e] = select(0.0, fwd_x[row + u32(clamp(iw, 0, i32(p.w) - 1))], ok);
    }
    for (var j = 0u; j < TW; j++) {
        for (var kx = 0u; kx < K; kx++) {
            (*acc)[j] += v[j * S + kx];
        }
    }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let xb = p.x.offset + t.n * p.x.batch_stride + t.c * p.h * p.w;
    let ih0 = i32(t.row * S) - i32(P);
    let iw0 = i32(t.col0 * S) - i32(P);
    var acc: array<f32, MAX_TW>;
    for (var j = 0u; j < TW; j++) { acc[j] = 0.0; }
    for (var ky = 0u; ky < K; ky++) {
        forward_row(ky, xb, ih0, iw0, &acc);
    }
    let yb = p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + t.row) * p.ow + t.col0;
    for (var j = 0u; j < TW; j++) {
        if (t.col0 + j < p.ow) {
            fwd_y[yb + j] = acc[j] * p.inv_area;
        }
    }
}

// forward4 bindings: x's offset, batch stride and W are multiples of 4, and TW * S is, so
// the span's first column is congruent to -P mod 4 and aligned vec4s cover it exactly.
@group(0) @binding(1) var<storage, read> fwd4_x: array<vec4<f32>>;  // (N, C, H, W / 4) via p.x / 4
@group(0) @binding(2) var<storage, read_write> fwd4_y: array<f32>;  // (N, C, OH, OW) via p.y

// forward_row for forward4: span element e is column base + shift + e, base a multiple
// of 4; a quad lies wholly inside or wholly outside the row (W is a multiple of 4).
fn forward4_row(ky: u32, xb: u32, ih0: i32, base: i32, acc: ptr<function, array<f32, MAX_TW>>) {
    let shift = (4u - P % 4u) % 4u;
    let ih = ih0 + i32(ky);
    let row_ok = ih >= 0 && ih < i32(p.h);
    let row = xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
    var v: array<vec4<f32>, MAX_SPAN4>;
    for (var q = 0u; q < ((TW - 1u) * S + K + shift + 3u) / 4u; q++) {
        let col = base + i32(4u * q);
        let ok = row_ok && col >= 0 && col < i32(p.w);
        let at = (row + u32(clamp(col, 0, i32(p.w) - 4))) / 4u;
        v[q] = select(vec4<f32>(), fwd4_x[at], ok);
    }
    for (var j = 0u; j < TW; j++) {
        for (var kx = 0u; kx < K; kx++) {
            let e = shift + j * S + kx;
            (*acc)[j] += v[e / 4u][e % 4u];
        }
    }
}

// The window sums of the TW outputs of invocation t, x loaded as vec4s.
fn forward4_sums(t: Work) -> array<f32, MAX_TW> {
    let xb = p.x.offset + t.n * p.x.batch_stride + t.c * p.h * p.w;
    let ih0 = i32(t.row * S) - i32(P);
    let base = i32(t.col0 * S) - i32(P) - i32((4u - P % 4u) % 4u);
    var acc: array<f32, MAX_TW>;
    for (var j = 0u; j < TW; j++) { acc[j] = 0.0; }
    for (var ky = 0u; ky < K; ky++) {
        forward4_row(ky, xb, ih0, base, &acc);
    }
    return acc;
}

@compute @workgroup_size(WG)
fn forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let acc = forward4_sums(t);
    let yb = p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + t.row) * p.ow + t.col0;
    for (var j = 0u; j < TW; j++) {
        if (t.col0 + j < p.ow) {
            fwd4_y[yb + j] = acc[j] * p.inv_area;
        }
    }
}

// forward4_v4: forward4 whose y rows are 4-aligned too (y's offset, batch stride and OW
// multiples of 4, TW a multiple of 4): the outputs are stored as vec4s, a quarter of the
// store instructions (on lavapipe each is a loop over the lanes of a SIMD row).
@group(0) @binding(2) var<storage, read_write> fwd4v_y: array<vec4<f32>>;  // (N, C, OH, OW / 4) via p.y / 4

@compute @workgroup_size(WG)
fn forward4_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let acc = forward4_sums(t);
    let yb = (p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + t.row) * p.ow + t.col0) / 4u;
    for (var q = 0u; q < TW / 4u; q++) {
        if (t.col0 + 4u * q < p.ow) {
            let j = 4u * q;
            fwd4v_y[yb + q] = vec4(acc[j], acc[j + 1u], acc[j + 2u], acc[j + 3u]) * p.inv_area;
        }
    }
}

// First window index o whose span [o*S - P, o*S - P + K) reaches position i.
fn first_window(i: u32) -> u32 {
    let a = i + P + 1u;
    if (a <= K) { return 0u; }
    return (a - K + S - 1u) / S;
}

// acc[j] = sum of d_y over the windows containing d_x element (ih, iw0 + j); the caller
// scales by 1 / K^2. d_y's plane starts at yb.
fn gather_windows(ih: u32, iw0: u32, yb: u32, acc: ptr<function, array<f32, MAX_TW>>) {
    if (K == S && P == 0u && TW % S == 0u) {
        // Non-overlapping windows, segment aligned to them: element iw0 + j lies in window
        // column iw0 / S + j / S of window row ih / S (none past the floor-mode edge).
        let oh = ih / S;
        let yrow = yb + min(oh, p.oh - 1u) * p.ow;
        for (var b = 0u; b < TW / S; b++) {
            let ow = iw0 / S + b;
            let g = select(0.0, bwd_d_y[yrow + min(ow, p.ow - 1u)], oh < p.oh && ow < p.ow);
            for (var e = 0u; e < S; e++) {
                (*acc)[b * S + e] = g;
            }
        }
        return;
    }
    for (var j = 0u; j < TW; j++) {
        (*acc)[j] = element_windows(ih, iw0 + j, yb);
    }
}

// Sum of d_y over the windows containing d_x element (ih, iw): window rows
// first_window(ih) ..= (ih + P) / S and likewise columns, at most ceil(K / S) each.
fn element_windows(ih: u32, iw: u32, yb: u32) -> f32 {
    let nwx = (K + S - 1u) / S;
    let oh_lo = first_window(ih);
    let oh_hi = min((ih + P) / S, p.oh - 1u);
    let ow_lo = first_window(iw);
    let ow_hi = min((iw + P) / S, p.ow - 1u);
    var sum = 0.0;
    for (var a = 0u; a < nwx; a++) {
        let oh = oh_lo + a;
        let yrow = yb + min(oh, p.oh - 1u) * p.ow;
        for (var b = 0u; b < nwx; b++) {
            let ow = ow_lo + b;
            let g = bwd_d_y[yrow + min(ow, p.ow - 1u)];
            sum += select(0.0, g, oh <= oh_hi && ow <= ow_hi);
        }
    }
    return sum;
}

// backward bindings (backward4: the same with d_x as vec4s)
@group(0) @binding(1) var<storage, read> bwd_d_y: array<f32>;                // (N, C, OH, OW) via p.y
@group(0) @binding(2) var<storage, read_write> bwd_d_x: array<f32>;          // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read_write> bwd4_d_x: array<vec4<f32>>;  // (N, C, H, W / 4) via p.x / 4

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    var acc: array<f32, MAX_TW>;
    gather_windows(t.row, t.col0, p.y.offset + t.n * p.y.batch_stride + t.c * p.oh * p.ow, &acc);
    let xb = p.x.offset + t.n * p.x.batch_stride + (t.c * p.h + t.row) * p.w + t.col0;
    for (var j = 0u; j < TW; j++) {
        if (t.col0 + j < p.w) {
            bwd_d_x[xb + j] += acc[j] * p.inv_area;
        }
    }
}

// backward4: d_x's offset, batch stride, W and TW are multiples of 4.
@compute @workgroup_size(WG)
fn backward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    var acc: array<f32, MAX_TW>;
    gather_windows(t.row, t.col0, p.y.offset + t.n * p.y.batch_stride + t.c * p.oh * p.ow, &acc);
    let xb = (p.x.offset + t.n * p.x.batch_stride + (t.c * p.h + t.row) * p.w + t.col0) / 4u;
    for (var q = 0u; q < TW / 4u; q++) {
        if (t.col0 + 4u * q < p.w) {
            let a = vec4<f32>(acc[4u * q], acc[4u * q + 1u], acc[4u * q + 2u], acc[4u * q + 3u]);
            bwd4_d_x[xb + q] += a * p.inv_area;
        }
    }
}

