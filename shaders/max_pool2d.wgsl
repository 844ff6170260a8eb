// 2-D max pooling, PyTorch semantics (floor mode, padding acts as -inf):
//   forward:  y[n,c,oh,ow] = max_{ky,kx < K} x[n,c, oh*S - P + ky, ow*S - P + kx]
//   backward: d_x[n,c,ih,iw] += sum over the windows (oh,ow) whose argmax is (ih,iw)
//             of d_y[n,c,oh,ow]
// The argmax of a window is its FIRST maximal element in row-major window order (PyTorch
// CPU behaviour); backward recomputes it from x, forward saves nothing.
// Kernel size K, stride S and padding P are override constants (one pipeline per pooling
// config, so every loop below has a constant trip count); shapes come in the uniform.
// Loop bodies live in helper functions so that their loops unroll into straight-line code
// with registers at constant indices whatever the calling loop does.
// Grid: 1-D over (plane, chunk): workgroup `wid` works on plane wid / gx (plane = n * C + c),
// chunk wid % gx of it.
// Forward: one invocation = TW consecutive outputs of one output row; for each kernel row it
// loads the row span the TW windows cover once ((TW - 1) * S + K values) into registers.
// `forward4` loads that span as aligned vec4s (used when x's rows start on multiples of 4).
// Backward (gather form, no atomics): one invocation = a TH x TW tile of d_x. It visits every
// window that can meet the tile, recomputes the window's argmax from x and adds the window's
// d_y to the tile element holding it (compare-select against the tile positions, so the
// tile stays in registers). `backward4` does the same for tiles aligned to the windows,
// loading x as vec4s once per window row and reading and writing d_x as vec4s.
// x, y/d_y and d_x may be channel-slice views (see View).

override WG: u32 = 64;
override K: u32 = 3;   // kernel size
override S: u32 = 2;   // stride
override P: u32 = 1;   // padding
override TW: u32 = 8;  // forward: outputs per invocation; backward: tile width
override TH: u32 = 2;  // backward: tile height
const MAX_SPAN: u32 = 64u;  // forward: >= (TW - 1) * S + K
const MAX_SPAN4: u32 = 17u; // forward4: >= (MAX_SPAN + 3) / 4 + 1
const MAX_TILE: u32 = 16u;  // backward: >= TH * TW

struct Params {
    x: View,      // geometry of x
    y: View,      // geometry of y (forward) or d_y (backward)
    d_x: View,    // geometry of d_x (backward)
    h: u32,       // input height H
    w: u32,       // input width W
    oh: u32,      // output height OH
    ow: u32,      // output width OW
    segs: u32,    // tiles per row: ceil(OW / TW) forward, ceil(W / TW) backward
    rows: u32,    // tile rows per plane: OH forward, ceil(H / TH) backward
    gx: u32,      // workgroups per plane: ceil(rows * segs / WG)
    planes: u32,  // N * C
    c: u32,       // channels C
    neg_inf: f32, // -infinity (the value of padding)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Where one invocation works: batch item, channel, its (tile) row and its first column.
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

// Folds kernel row ky of the TW windows starting at (ih0, iw0) into m.
fn forward_row(ky: u32, xb: u32, ih0: i32, iw0: i32, m: ptr<function, array<f32, MAX_TILE>>) {
    let ih = ih0 + i32(ky);
    let row_ok = ih >= 0 && ih < i32(p.h);
    let row = xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
    // The row span of all TW windows; padding reads -inf.
    var v: array<f32, MAX_SPAN>;
    for (var e = 0u; e < (TW - 1u) * S + K; e++) {
        let iw = iw0 + i32(e);
        let ok = row_ok && iw >= 0 && iw < i32(p.w);
        v[e] = select(p.neg_inf, fwd_x[row + u32(clamp(iw, 0, i32(p.w) - 1))], ok);
    }
    for (var j = 0u; j < TW; j++) {
        for (var kx = 0u; kx < K; kx++) {
            (*m)[j] = max((*m)[j], v[j * S + kx]);
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
    var m: array<f32, MAX_TILE>;
    for (var j = 0u; j < TW; j++) { m[j] = p.neg_inf; }
    for (var ky = 0u; ky < K; ky++) {
        forward_row(ky, xb, ih0, iw0, &m);
    }
    let yb = p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + t.row) * p.ow + t.col0;
    for (var j = 0u; j < TW; j++) {
        if (t.col0 + j < p.ow) {
            fwd_y[yb + j] = m[j];
        }
    }
}

// forward4 bindings: x's offset, batch stride and W are multiples of 4, and TW * S is, so
// the span's first column is congruent to -P mod 4 and aligned vec4s cover it exactly.
@group(0) @binding(1) var<storage, read> fwd4_x: array<vec4<f32>>;  // (N, C, H, W / 4) via p.x / 4
@group(0) @binding(2) var<storage, read_write> fwd4_y: array<f32>;  // (N, C, OH, OW) via p.y

// forward_row for forward4: span element e is column base + shift + e, base a multiple
// of 4; a quad lies wholly inside or wholly outside the row (W is a multiple of 4).
fn forward4_row(ky: u32, xb: u32, ih0: i32, base: i32, m: ptr<function, array<f32, MAX_TILE>>) {
    let shift = (4u - P % 4u) % 4u;
    let ih = ih0 + i32(ky);
    let row_ok = ih >= 0 && ih < i32(p.h);
    let row = xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
    let ninf = vec4<f32>(p.neg_inf);
    var v: array<vec4<f32>, MAX_SPAN4>;
    for (var q = 0u; q < ((TW - 1u) * S + K + shift + 3u) / 4u; q++) {
        let col = base + i32(4u * q);
        let ok = row_ok && col >= 0 && col < i32(p.w);
        let at = (row + u32(clamp(col, 0, i32(p.w) - 4))) / 4u;
        v[q] = select(ninf, fwd4_x[at], ok);
    }
    for (var j = 0u; j < TW; j++) {
        for (var kx = 0u; kx < K; kx++) {
            let e = shift + j * S + kx;
            (*m)[j] = max((*m)[j], v[e / 4u][e % 4u]);
        }
    }
}

@compute @workgroup_size(WG)
fn forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let xb = p.x.offset + t.n * p.x.batch_stride + t.c * p.h * p.w;
    let ih0 = i32(t.row * S) - i32(P);
    let base = i32(t.col0 * S) - i32(P) - i32((4u - P % 4u) % 4u);
    var m: array<f32, MAX_TILE>;
    for (var j = 0u; j < TW; j++) { m[j] = p.neg_inf; }
    for (var ky = 0u; ky < K; ky++) {
        forward4_row(ky, xb, ih0, base, &m);
    }
    let yb = p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + t.row) * p.ow + t.col0;
    for (var j = 0u; j < TW; j++) {
        if (t.col0 + j < p.ow) {
            fwd4_y[yb + j] = m[j];
        }
    }
}

// backward bindings
@group(0) @binding(1) var<storage, read> bwd_x: array<f32>;          // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read> bwd_d_y: array<f32>;        // (N, C, OH, OW) via p.y
@group(0) @binding(3) var<storage, read_write> bwd_d_x: array<f32>;  // (N, C, H, W) via p.d_x

// First window index o whose span [o*S - P, o*S - P + K) reaches position i.
fn first_window(i: u32) -> u32 {
    let a = i + P + 1u;
    if (a <= K) { return 0u; }
    return (a - K + S - 1u) / S;
}

// Adds d_y of window (oh, ow) to the tile element at (ih0, iw0) + (r, c) holding the
// window's argmax, if any. xb / yb: plane starts of x and d_y.
fn backward_window(oh: u32, ow: u32, ih0: u32, iw0: u32, xb: u32, yb: u32,
                   acc: ptr<function, array<f32, MAX_TILE>>) {
    let valid = oh < p.oh && ow < p.ow;
    let g = select(0.0, bwd_d_y[yb + min(oh, p.oh - 1u) * p.ow + min(ow, p.ow - 1u)], valid);
    // The argmax starts at the window's first in-image element, and only a strictly larger
    // value moves it, so ties keep the first maximum in row-major order and padding never
    // wins.
    let top = i32(oh * S) - i32(P);
    let left = i32(ow * S) - i32(P);
    var arg_r = max(top, 0);
    var arg_c = max(left, 0);
    var m = p.neg_inf;
    for (var ky = 0u; ky < K; ky++) {
        let ih = top + i32(ky);
        let row_ok = ih >= 0 && ih < i32(p.h);
        let row = xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
        for (var kx = 0u; kx < K; kx++) {
            let iw = left + i32(kx);
            let ok = row_ok && iw >= 0 && iw < i32(p.w);
            let e = bwd_x[row + u32(clamp(iw, 0, i32(p.w) - 1))];
            let better = ok && e > m;
            m = select(m, e, better);
            arg_r = select(arg_r, ih, better);
            arg_c = select(arg_c, iw, better);
        }
    }
    // Tile position of the argmax; -1 when outside the tile or the window is invalid.
    let dr = arg_r - i32(ih0);
    let dc = arg_c - i32(iw0);
    let inside = valid && dr >= 0 && dr < i32(TH) && dc >= 0 && dc < i32(TW);
    let t = select(-1, dr * i32(TW) + dc, inside);
    for (var j = 0u; j < TH * TW; j++) {
        (*acc)[j] += select(0.0, g, t == i32(j));
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let ih0 = t.row * TH;
    let iw0 = t.col0;
    let xb = p.x.offset + t.n * p.x.batch_stride + t.c * p.h * p.w;
    let yb = p.y.offset + t.n * p.y.batch_stride + t.c * p.oh * p.ow;
    // At most nwr window rows x nwc window columns meet the tile, starting at
    // (first_window(ih0), first_window(iw0)); windows past the output edge add 0.
    let nwr = (TH + K - 2u) / S + 1u;
    let nwc = (TW + K - 2u) / S + 1u;
    let oh_lo = first_window(ih0);
    let ow_lo = first_window(iw0);
    var acc: array<f32, MAX_TILE>;
    for (var j = 0u; j < TH * TW; j++) { acc[j] = 0.0; }
    for (var a = 0u; a < nwr; a++) {
        for (var b = 0u; b < nwc; b++) {
            backward_window(oh_lo + a, ow_lo + b, ih0, iw0, xb, yb, &acc);
        }
    }
    for (var ty = 0u; ty < TH; ty++) {
        let ih = ih0 + ty;
        if (ih < p.h) {
            let db = p.d_x.offset + t.n * p.d_x.batch_stride + (t.c * p.h + ih) * p.w + iw0;
            for (var tx = 0u; tx < TW; tx++) {
                if (iw0 + tx < p.w) {
                    bwd_d_x[db + tx] += acc[ty * TW + tx];
                }
            }
        }
    }
}

// backward4: backward for tiles aligned to the windows, with x and d_x as vec4s: x's and
// d_x's offsets, batch strides and W are multiples of 4, TW of 4 and S, TH of S. Then the
// windows meeting the tile are static: window rows ih0 / S - L + a (a < nwr) and columns
// iw0 / S - L + b (b < nwc), with L = (K - 1 - P) / S, and they cover x from column
// iw0 - L*S - P, congruent to -(L*S + P) mod 4. Per window row the K x rows it needs are
// loaded as aligned vec4s into registers, and every window's argmax is taken from there.
const MAX_V4: u32 = 64u;  // >= K * quads, checked by the launcher
const MAX_WIN: u32 = 16u; // >= nwc

@group(0) @binding(1) var<storage, read> bwd4_x: array<vec4<f32>>;          // (N, C, H, W / 4) via p.x / 4
@group(0) @binding(2) var<storage, read> bwd4_d_y: array<f32>;              // (N, C, OH, OW) via p.y
@group(0) @binding(3) var<storage, read_write> bwd4_d_x: array<vec4<f32>>;  // (N, C, H, W / 4) via p.d_x / 4

// What backward4's helper needs to know about its tile.
struct Tile {
    ih0: u32,
    iw0: u32,
    xb: u32,      // x plane start
    yb: u32,      // d_y plane start
    oh_base: i32, // window row of a = 0
    ow_base: i32, // window column of b = 0
}

// Static window geometry of backward4 (see above); all constants.
fn lead() -> u32 { return ((K - 1u - P) / S) * S + P; }
fn shift4() -> u32 { return (4u - lead() % 4u) % 4u; }
fn nwc4() -> u32 { return (K - 1u - P) / S + (TW - 1u + P) / S + 1u; }

// Adds to acc the gradient of the windows of window row a that meet the tile. A separate
// function, so that its loops (all with constant trip counts) unroll completely even when
// the caller's loop over a does not.
fn window_row(a: u32, t: Tile, acc: ptr<function, array<f32, MAX_TILE>>) {
    let lead = i32(lead());
    let shift = shift4();
    let nwc = nwc4();
    let quads = ((nwc - 1u) * S + K + shift + 3u) / 4u;
    let oh = t.oh_base + i32(a);
    let top = i32(t.ih0) - lead + i32(a * S);   // first x row of window row a
    let base = i32(t.iw0) - lead - i32(shift);  // first x column loaded, a multiple of 4
    let ninf = vec4<f32>(p.neg_inf);
    // The K x rows of the window row as aligned vec4s; padding reads -inf.
    var v: array<vec4<f32>, MAX_V4>;
    for (var ky = 0u; ky < K; ky++) {
        let ih = top + i32(ky);
        let row_ok = ih >= 0 && ih < i32(p.h);
        let row = t.xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
        for (var q = 0u; q < quads; q++) {
            let col = base + i32(4u * q);
            let ok = row_ok && col >= 0 && col < i32(p.w);
            let at = (row + u32(clamp(col, 0, i32(p.w) - 4))) / 4u;
            v[ky * quads + q] = select(ninf, bwd4_x[at], ok);
        }
    }
    // Argmax of every window of the row; each starts at the window's first in-image
    // element and only a strictly larger value moves it (see backward).
    var m: array<f32, MAX_WIN>;
    var arg: array<u32, MAX_WIN>;   // ky * K + kx
    for (var b = 0u; b < nwc; b++) {
        let left = i32(t.iw0) - lead + i32(b * S);
        m[b] = p.neg_inf;
        arg[b] = u32(max(-top, 0)) * K + u32(max(-left, 0));
    }
    for (var ky = 0u; ky < K; ky++) {
        for (var kx = 0u; kx < K; kx++) {
            for (var b = 0u; b < nwc; b++) {
                let e = shift + b * S + kx;
                let val = v[ky * quads + e / 4u][e % 4u];
                let better = val > m[b];
                m[b] = select(m[b], val, better);
                arg[b] = select(arg[b], ky * K + kx, better);
            }
        }
    }
    // Window b's gradient, and the tile row of its argmax (-1 if outside the tile or the
    // window lies past the output edge).
    let yrow = t.yb + u32(clamp(oh, 0, i32(p.oh) - 1)) * p.ow;
    var g: array<f32, MAX_WIN>;
    var arg_row: array<i32, MAX_WIN>;
    for (var b = 0u; b < nwc; b++) {
        let ow = t.ow_base + i32(b);
        let valid = oh >= 0 && oh < i32(p.oh) && ow >= 0 && ow < i32(p.ow);
        g[b] = select(0.0, bwd4_d_y[yrow + u32(clamp(ow, 0, i32(p.ow) - 1))], valid);
        arg_row[b] = select(-1, top + i32(arg[b] / K) - i32(t.ih0), valid);
    }
    // Window b's column kx is tile column b*S + kx - lead, a constant: each window is
    // tested only against the TH x K tile positions it covers.
    for (var ty = 0u; ty < TH; ty++) {
        for (var kx = 0u; kx < K; kx++) {
            for (var b = 0u; b < nwc; b++) {
                let tx = i32(b * S + kx) - lead;
                if (tx >= 0 && tx < i32(TW)) {
                    let hit = arg_row[b] == i32(ty) && arg[b] % K == kx;
                    (*acc)[ty * TW + u32(tx)] += select(0.0, g[b], hit);
                }
            }
        }
    }
}

@compute @workgroup_size(WG)
fn backward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let w = work(wg, nwg, li);
    if (!w.ok) { return; }
    let ih0 = w.row * TH;
    let iw0 = w.col0;
    let l = (K - 1u - P) / S;
    let t = Tile(
        ih0,
        iw0,
        p.x.offset + w.n * p.x.batch_stride + w.c * p.h * p.w,
        p.y.offset + w.n * p.y.batch_stride + w.c * p.oh * p.ow,
        i32(ih0 / S) - i32(l),
        i32(iw0 / S) - i32(l),
    );
    var acc: array<f32, MAX_TILE>;
    for (var j = 0u; j < TH * TW; j++) { acc[j] = 0.0; }
    for (var a = 0u; a < l + (TH - 1u + P) / S + 1u; a++) {
        window_row(a, t, &acc);
    }
    for (var ty = 0u; ty < TH; ty++) {
        let ih = ih0 + ty;
        if (ih < p.h) {
            let db = (p.d_x.offset + w.n * p.d_x.batch_stride + (w.c * p.h + ih) * p.w + iw0) / 4u;
            for (var q = 0u; q < TW / 4u; q++) {
                if (iw0 + 4u * q < p.w) {
                    let j = ty * TW + 4u * q;
                    bwd4_d_x[db + q] += vec4<f32>(acc[j], acc[j + 1u], acc[j + 2u], acc[j + 3u]);
                }
            }
        }
    }
}
