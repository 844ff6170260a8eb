// 2-D max pooling, PyTorch semantics (floor mode, padding acts as -inf):
//   forward:  y[n,c,oh,ow]   = max_{ky,kx < K} x[n,c, oh*S - P + ky, ow*S - P + kx]
//             idx[n,c,oh,ow] = ky*K + kx of the window's FIRST maximum in row-major window
//                              order (PyTorch CPU): the scan starts at the window's first
//                              in-image element and only a strictly larger value moves it,
//                              so ties keep the first maximum and padding never wins
//   backward: d_x[n,c,ih,iw] += sum over the windows (oh,ow) whose saved argmax
//             (oh*S - P + idx / K, ow*S - P + idx % K) is (ih,iw) of d_y[n,c,oh,ow]
// Backward reads d_y and the indices, never x.
// Index layout (a tensor of its own, contiguous): one byte per output, four to a u32 word,
// little-endian, each output row padded to a whole number of words (zero bytes):
//   word (n, c, oh, q), q < ceil(OW / 4), at ((n*C + c)*OH + oh) * ceil(OW / 4) + q, holds
//   idx[n,c,oh,4q + b] in bits 8b .. 8b + 7. Word q of a row belongs to outputs 4q .. 4q + 3,
//   the same outputs as vec4 q of a 4-aligned y row: the vec4 kernels move one y (d_y) vec4
//   and one index word together. Needs K*K <= 256.
// Kernel size K, stride S and padding P are override constants (one pipeline per pooling
// config, so every loop below has a constant trip count); shapes come in the uniform.
// Register arrays must only ever be indexed by constants: llvmpipe keeps an array with a
// variable index in memory, one per-lane access at a time. Mesa unrolls a loop only while
// its unrolled size stays small (wgpu's loop-bounding counters count too), so large
// straight-line blocks are built from helper calls (inlined whole) around small loops.
// Grid: 1-D over (plane, tile), plane = n * C + c, p.tiles = p.rows * p.segs tiles per
// plane: a tile row (or row segment) and a column segment (or strip).
// forward: one invocation = TW (a multiple of 4) consecutive outputs of one output row; per
// kernel row it loads the row span the TW windows cover once ((TW - 1) * S + K values).
// forward4 (x and y rows start on multiples of 4, OW too): one invocation walks a strip of
// TW outputs down p.chunks output rows. Each step loads only the x rows the previous step
// has not (S of the K, as aligned vec4s), folds each into every output row whose windows
// contain it (the running maxima of the next rows stay in registers), and writes one row
// of y as vec4s and of indices as words. The `_inference` entry points write y only.
// backward (gather form, no atomics): one invocation = a TH x TW tile of d_x. It visits every
// window that can meet the tile and adds the window's d_y to the tile element holding its
// saved argmax (compare-select, so the tile stays in registers).
// backward4 (d_x and d_y rows 4-aligned, TW a multiple of 4*S): one invocation walks a strip
// of TW d_x columns down p.chunks steps of S rows. The windows meeting a step are static;
// each step loads one new window row (its d_y as vec4s, its indices as one word per 4
// windows; the other rows carry over in registers), gathers, and reads and writes d_x as
// vec4s.
// x, y/d_y and d_x may be channel-slice views (see View).

override WG: u32 = 64;
override K: u32 = 3;   // kernel size
override S: u32 = 2;   // stride
override P: u32 = 1;   // padding
override TW: u32 = 8;  // forward: outputs per invocation or strip; backward: d_x tile width
override TH: u32 = 2;  // backward: d_x tile height
const MAX_SPAN: u32 = 64u;  // forward: >= (TW - 1) * S + K
const MAX_OUT: u32 = 64u;   // >= TW (forward, backward4), TH * TW (backward),
                            //    f4_pending() * TW (forward4)
const MAX_Q: u32 = 16u;     // >= f4_quads() (forward4), b4_quads() (backward4)

struct Params {
    x: View,      // geometry of x (forward)
    y: View,      // geometry of y (forward) or d_y (backward)
    d_x: View,    // geometry of d_x (backward)
    h: u32,       // input height H
    w: u32,       // input width W
    oh: u32,      // output height OH
    ow: u32,      // output width OW
    idx_row: u32, // index words per output row: ceil(OW / 4)
    rows: u32,    // tile rows (forward4, backward4: row segments) per plane
    segs: u32,    // tiles (forward4, backward4: strips) per tile row
    chunks: u32,  // forward4 / backward4: output rows / steps per row segment
    tiles: u32,   // rows * segs
    planes: u32,  // N * C
    c: u32,       // channels C
    neg_inf: f32, // -infinity (the value of padding)
}

@group(0) @binding(0) var<uniform> p: Params;

// Where one invocation works: batch item, channel, plane, tile row and segment.
struct Work {
    n: u32,
    c: u32,
    plane: u32,
    row: u32,
    seg: u32,
    ok: bool,
}

fn work(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> Work {
    let id = (wg.x + wg.y * nwg.x) * WG + li;
    let plane = id / p.tiles;
    let tile = id - plane * p.tiles;
    let row = tile / p.segs;
    let n = plane / p.c;
    return Work(n, plane - n * p.c, plane, row, tile - row * p.segs, plane < p.planes);
}

// Window index ky*K + kx of the first in-image element of the window whose top-left corner
// is (top, left): where the argmax scan starts.
fn first_in_image(top: i32, left: i32) -> u32 {
    return u32(max(-top, 0)) * K + u32(max(-left, 0));
}

// Index word of 4 outputs: a[j] .. a[j + 3] as bytes 0 .. 3.
fn pack4(a: ptr<function, array<u32, MAX_OUT>>, j: u32) -> u32 {
    return (*a)[j] | ((*a)[j + 1u] << 8u) | ((*a)[j + 2u] << 16u) | ((*a)[j + 3u] << 24u);
}

// Folds value v at window position ky*K + kx into output i's running maximum and argmax.
fn fold(i: u32, v: f32, at: u32, m: ptr<function, array<f32, MAX_OUT>>,
        a: ptr<function, array<u32, MAX_OUT>>) {
    let better = v > (*m)[i];
    (*m)[i] = select((*m)[i], v, better);
    (*a)[i] = select((*a)[i], at, better);
}

// forward bindings
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;        // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;  // (N, C, OH, OW) via p.y
@group(0) @binding(3) var<storage, read_write> fwd_idx: array<u32>; // (N, C, OH, ceil(OW/4)) words

// Folds kernel row ky of the TW windows starting at (ih0, iw0) into m, a.
fn forward_row(ky: u32, xb: u32, ih0: i32, iw0: i32, m: ptr<function, array<f32, MAX_OUT>>,
               a: ptr<function, array<u32, MAX_OUT>>) {
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
            fold(j, v[j * S + kx], ky * K + kx, m, a);
        }
    }
}

// Maximum and argmax of the TW windows of output row t.row starting at column col0.
fn forward_tile(t: Work, col0: u32, m: ptr<function, array<f32, MAX_OUT>>,
                a: ptr<function, array<u32, MAX_OUT>>) {
    let xb = p.x.offset + t.n * p.x.batch_stride + t.c * p.h * p.w;
    let ih0 = i32(t.row * S) - i32(P);
    let iw0 = i32(col0 * S) - i32(P);
    for (var j = 0u; j < TW; j++) {
        (*m)[j] = p.neg_inf;
        (*a)[j] = first_in_image(ih0, iw0 + i32(j * S));
    }
    for (var ky = 0u; ky < K; ky++) {
        forward_row(ky, xb, ih0, iw0, m, a);
    }
}

// Stores the TW maxima of forward_tile.
fn forward_store_y(t: Work, col0: u32, m: ptr<function, array<f32, MAX_OUT>>) {
    let yb = p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + t.row) * p.ow + col0;
    for (var j = 0u; j < TW; j++) {
        if (col0 + j < p.ow) {
            fwd_y[yb + j] = (*m)[j];
        }
    }
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let col0 = t.seg * TW;
    var m: array<f32, MAX_OUT>;
    var a: array<u32, MAX_OUT>;
    forward_tile(t, col0, &m, &a);
    forward_store_y(t, col0, &m);
    // Bytes past the row end are padding: zero.
    for (var j = 0u; j < TW; j++) {
        a[j] = select(0u, a[j], col0 + j < p.ow);
    }
    let ib = (t.plane * p.oh + t.row) * p.idx_row + col0 / 4u;
    for (var q = 0u; q < TW / 4u; q++) {
        if (col0 + 4u * q < p.ow) {
            fwd_idx[ib + q] = pack4(&a, 4u * q);
        }
    }
}

@compute @workgroup_size(WG)
fn forward_inference(@builtin(workgroup_id) wg: vec3<u32>,
                     @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let col0 = t.seg * TW;
    var m: array<f32, MAX_OUT>;
    var a: array<u32, MAX_OUT>;
    forward_tile(t, col0, &m, &a);
    forward_store_y(t, col0, &m);
}

// forward4 bindings: x's and y's offsets and batch strides, W and OW are multiples of 4, and
// TW and TW * S are, so a strip's span starts at a column congruent to -P mod 4 and aligned
// vec4s cover it exactly; y rows are whole vec4s.
@group(0) @binding(1) var<storage, read> fwd4_x: array<vec4<f32>>;        // (N, C, H, W / 4) via p.x / 4
@group(0) @binding(2) var<storage, read_write> fwd4_y: array<vec4<f32>>;  // (N, C, OH, OW / 4) via p.y / 4

// Static geometry of forward4 (all constants). The strip's span of an x row starts at
// column col0*S - P = quad-aligned column base + f4_shift() and covers f4_quads() quads.
// Output row oh reads x rows oh*S - P + ky, ky < K; the first f4_pre() of them are the last
// rows of output row oh - 1 too, so each step loads the f4_new() rows after them, and folds
// every loaded row into the f4_pending() output rows oh .. whose windows contain it.
fn f4_shift() -> u32 { return (4u - P % 4u) % 4u; }
fn f4_quads() -> u32 { return ((TW - 1u) * S + K + f4_shift() + 3u) / 4u; }
fn f4_new() -> u32 { return min(S, K); }
fn f4_pre() -> u32 { return K - f4_new(); }
fn f4_pending() -> u32 { return (K - 1u) / S + 1u; }

// Where forward4's helpers read and write.
struct ForwardStrip {
    xb: u32,    // x plane start
    base: i32,  // first (quad-aligned) column of the span
    col0: u32,  // first output column
}

// Folds x row ih (the row's kernel row is ky0 for output row oh, ky0 - t*S for oh + t)
// into the pending output rows: m[t*TW + j], a[t*TW + j] of output row oh + t, column
// col0 + j. The quads lying outside the image read -inf (a quad is wholly in or out).
fn forward4_row(s: ForwardStrip, ih: i32, ky0: u32, m: ptr<function, array<f32, MAX_OUT>>,
                a: ptr<function, array<u32, MAX_OUT>>) {
    let row_ok = ih >= 0 && ih < i32(p.h);
    let row = s.xb + u32(clamp(ih, 0, i32(p.h) - 1)) * p.w;
    var v: array<vec4<f32>, MAX_Q>;
    for (var q = 0u; q < f4_quads(); q++) {
        let col = s.base + i32(4u * q);
        let ok = row_ok && col >= 0 && col < i32(p.w);
        let at = (row + u32(clamp(col, 0, i32(p.w) - 4))) / 4u;
        v[q] = select(vec4<f32>(p.neg_inf), fwd4_x[at], ok);
    }
    for (var t = 0u; t < f4_pending(); t++) {
        let ky = i32(ky0) - i32(t * S);
        if (ky >= 0 && ky < i32(K)) {
            for (var j = 0u; j < TW; j++) {
                for (var kx = 0u; kx < K; kx++) {
                    let e = f4_shift() + j * S + kx;
                    fold(t * TW + j, v[e / 4u][e % 4u], u32(ky) * K + kx, m, a);
                }
            }
        }
    }
}

// Starts pending slot t for output row oh: no maximum yet, argmax at the first in-image
// element of each window.
fn forward4_open(s: ForwardStrip, t: u32, oh: u32, m: ptr<function, array<f32, MAX_OUT>>,
                 a: ptr<function, array<u32, MAX_OUT>>) {
    for (var j = 0u; j < TW; j++) {
        (*m)[t * TW + j] = p.neg_inf;
        (*a)[t * TW + j] = first_in_image(i32(oh * S) - i32(P),
                                          i32((s.col0 + j) * S) - i32(P));
    }
}

// Opens the pending rows of the first output row oh and folds the x rows it shares with
// output row oh - 1.
fn forward4_prime(s: ForwardStrip, oh: u32, m: ptr<function, array<f32, MAX_OUT>>,
                  a: ptr<function, array<u32, MAX_OUT>>) {
    for (var t = 0u; t < f4_pending(); t++) {
        forward4_open(s, t, oh + t, m, a);
    }
    for (var i = 0u; i < f4_pre(); i++) {
        forward4_row(s, i32(oh * S + i) - i32(P), i, m, a);
    }
}

// Completes output row oh (pending slot 0): folds its last f4_new() x rows.
fn forward4_step(s: ForwardStrip, oh: u32, m: ptr<function, array<f32, MAX_OUT>>,
                 a: ptr<function, array<u32, MAX_OUT>>) {
    for (var i = 0u; i < f4_new(); i++) {
        forward4_row(s, i32(oh * S + f4_pre() + i) - i32(P), f4_pre() + i, m, a);
    }
}

// Moves the pending rows up one slot after output row oh and opens the last for row
// oh + f4_pending().
fn forward4_shift(s: ForwardStrip, oh: u32, m: ptr<function, array<f32, MAX_OUT>>,
                  a: ptr<function, array<u32, MAX_OUT>>) {
    for (var t = 0u; t + 1u < f4_pending(); t++) {
        for (var j = 0u; j < TW; j++) {
            (*m)[t * TW + j] = (*m)[(t + 1u) * TW + j];
            (*a)[t * TW + j] = (*a)[(t + 1u) * TW + j];
        }
    }
    forward4_open(s, f4_pending() - 1u, oh + f4_pending(), m, a);
}

// Stores output row oh's maxima (pending slot 0) as vec4s.
fn forward4_store_y(t: Work, oh: u32, col0: u32, m: ptr<function, array<f32, MAX_OUT>>) {
    let yb = (p.y.offset + t.n * p.y.batch_stride + (t.c * p.oh + oh) * p.ow + col0) / 4u;
    for (var q = 0u; q < TW / 4u; q++) {
        if (col0 + 4u * q < p.ow) {
            let j = 4u * q;
            fwd4_y[yb + q] = vec4<f32>((*m)[j], (*m)[j + 1u], (*m)[j + 2u], (*m)[j + 3u]);
        }
    }
}

// Stores output row oh's indices (pending slot 0), one word per 4 outputs.
fn forward4_store_idx(t: Work, oh: u32, col0: u32, a: ptr<function, array<u32, MAX_OUT>>) {
    let ib = (t.plane * p.oh + oh) * p.idx_row + col0 / 4u;
    for (var q = 0u; q < TW / 4u; q++) {
        if (col0 + 4u * q < p.ow) {
            fwd_idx[ib + q] = pack4(a, 4u * q);
        }
    }
}

// The strip of invocation t: TW output columns from t.seg * TW, output rows from
// t.row * p.chunks.
fn forward4_strip(t: Work) -> ForwardStrip {
    let col0 = t.seg * TW;
    return ForwardStrip(p.x.offset + t.n * p.x.batch_stride + t.c * p.h * p.w,
                        i32(col0 * S) - i32(P) - i32(f4_shift()), col0);
}

@compute @workgroup_size(WG)
fn forward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let s = forward4_strip(t);
    let oh0 = t.row * p.chunks;
    var m: array<f32, MAX_OUT>;
    var a: array<u32, MAX_OUT>;
    forward4_prime(s, oh0, &m, &a);
    for (var i = 0u; i < p.chunks; i++) {
        let oh = oh0 + i;
        if (oh >= p.oh) { break; }
        forward4_step(s, oh, &m, &a);
        forward4_store_y(t, oh, s.col0, &m);
        forward4_store_idx(t, oh, s.col0, &a);
        forward4_shift(s, oh, &m, &a);
    }
}

@compute @workgroup_size(WG)
fn forward4_inference(@builtin(workgroup_id) wg: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let s = forward4_strip(t);
    let oh0 = t.row * p.chunks;
    var m: array<f32, MAX_OUT>;
    var a: array<u32, MAX_OUT>;
    forward4_prime(s, oh0, &m, &a);
    for (var i = 0u; i < p.chunks; i++) {
        let oh = oh0 + i;
        if (oh >= p.oh) { break; }
        forward4_step(s, oh, &m, &a);
        forward4_store_y(t, oh, s.col0, &m);
        forward4_shift(s, oh, &m, &a);
    }
}

// backward bindings
@group(0) @binding(1) var<storage, read> bwd_d_y: array<f32>;        // (N, C, OH, OW) via p.y
@group(0) @binding(2) var<storage, read> bwd_idx: array<u32>;        // (N, C, OH, ceil(OW/4)) words
@group(0) @binding(3) var<storage, read_write> bwd_d_x: array<f32>;  // (N, C, H, W) via p.d_x

// Saved argmax (ky*K + kx) of output column ow in the index row starting at word ib.
fn saved_arg(ib: u32, ow: u32) -> u32 {
    return (bwd_idx[ib + ow / 4u] >> (8u * (ow % 4u))) & 0xffu;
}

// First window index o whose span [o*S - P, o*S - P + K) reaches position i.
fn first_window(i: u32) -> u32 {
    let a = i + P + 1u;
    if (a <= K) { return 0u; }
    return (a - K + S - 1u) / S;
}

// Adds d_y of window (oh, ow) to the tile element at (ih0, iw0) + (r, c) holding the
// window's saved argmax, if any. yb / ib: plane starts of d_y and of the indices.
fn backward_window(oh: u32, ow: u32, ih0: u32, iw0: u32, yb: u32, ib: u32,
                   acc: ptr<function, array<f32, MAX_OUT>>) {
    let valid = oh < p.oh && ow < p.ow;
    let ohc = min(oh, p.oh - 1u);
    let owc = min(ow, p.ow - 1u);
    let g = select(0.0, bwd_d_y[yb + ohc * p.ow + owc], valid);
    let arg = saved_arg(ib + ohc * p.idx_row, owc);
    // Tile position of the argmax; -1 when outside the tile or the window is invalid.
    let dr = i32(oh * S + arg / K) - i32(P) - i32(ih0);
    let dc = i32(ow * S + arg % K) - i32(P) - i32(iw0);
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
    let iw0 = t.seg * TW;
    let yb = p.y.offset + t.n * p.y.batch_stride + t.c * p.oh * p.ow;
    let ib = t.plane * p.oh * p.idx_row;
    // At most nwr window rows x nwc window columns meet the tile, starting at
    // (first_window(ih0), first_window(iw0)); windows past the output edge add 0.
    let nwr = (TH + K - 2u) / S + 1u;
    let nwc = (TW + K - 2u) / S + 1u;
    let oh_lo = first_window(ih0);
    let ow_lo = first_window(iw0);
    var acc: array<f32, MAX_OUT>;
    for (var j = 0u; j < TH * TW; j++) { acc[j] = 0.0; }
    for (var r = 0u; r < nwr; r++) {
        for (var c = 0u; c < nwc; c++) {
            backward_window(oh_lo + r, ow_lo + c, ih0, iw0, yb, ib, &acc);
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

// backward4 bindings: d_x's and d_y's offsets and batch strides, W and OW are multiples of
// 4; TW is a multiple of 4*S. One invocation walks a strip of TW d_x columns from iw0 down,
// S rows per step. The windows meeting rows [ih0, ih0 + S) x columns [iw0, iw0 + TW),
// ih0 and iw0 multiples of S, are static: window rows ih0/S - L + a (a < b4_rows() <= 4)
// and columns iw0/S - 4*LQ + b (b < 4 * b4_quads()), L = (K - 1 - P) / S,
// LQ = ceil(L / 4); iw0/S is a multiple of 4, so a window row's d_y values and index bytes
// are b4_quads() aligned vec4s and words. The next step needs window rows a + 1: all but
// the last carry over, one is loaded. The window rows live in separate variables (rows
// 0 .. 3), each handled by its own call, so that every register index is a constant.
@group(0) @binding(1) var<storage, read> bwd4_d_y: array<vec4<f32>>;        // (N, C, OH, OW / 4) via p.y / 4
@group(0) @binding(3) var<storage, read_write> bwd4_d_x: array<vec4<f32>>;  // (N, C, H, W / 4) via p.d_x / 4

// Static window geometry of backward4 (all constants).
fn b4_lead() -> u32 { return (K - 1u - P) / S; }      // L
fn b4_lq() -> u32 { return (b4_lead() + 3u) / 4u; }   // LQ
fn b4_quads() -> u32 { return b4_lq() + ((TW - 1u + P) / S + 4u) / 4u; }
fn b4_rows() -> u32 { return b4_lead() + (S - 1u + P) / S + 1u; }

// Where backward4's helpers read and write.
struct BackwardStrip {
    yb: u32,    // d_y plane start
    ib: u32,    // index plane start
    col: i32,   // first window column loaded (a multiple of 4)
    iw0: u32,   // first d_x column
}

// One window row: d_y values (0 outside the output) and index words, 4 windows each.
struct Windows4 {
    g: array<vec4<f32>, MAX_Q>,
    w: array<u32, MAX_Q>,
}

// Loads window row oh.
fn backward4_load(s: BackwardStrip, oh: i32, r: ptr<function, Windows4>) {
    let row_ok = oh >= 0 && oh < i32(p.oh);
    let ohc = u32(clamp(oh, 0, i32(p.oh) - 1));
    for (var q = 0u; q < b4_quads(); q++) {
        let col = s.col + i32(4u * q);
        let ok = row_ok && col >= 0 && col < i32(p.ow);
        let colc = u32(clamp(col, 0, i32(p.ow) - 4));
        (*r).g[q] = select(vec4<f32>(0.0), bwd4_d_y[(s.yb + ohc * p.ow + colc) / 4u], ok);
        (*r).w[q] = bwd_idx[s.ib + ohc * p.idx_row + colc / 4u];
    }
}

// Adds to acc (one d_x row of the strip, ty rows below ih0), at tile columns
// [4*q, 4*q + 4), the gradient of the windows of window row a held in r. The row is kernel
// row ky = ty + P - (a - L)*S of those windows (none if out of range). Tile column tx lies
// in the windows b = b0(tx) + d, d < (K - 1)/S + 1, at kernel column
// kx = tx + P - (b - 4*LQ)*S when that is in range: for constant tx all of these are
// constants, so every register index is.
fn backward4_gather(a: u32, ty: u32, q: u32, r: ptr<function, Windows4>,
                    acc: ptr<function, array<f32, MAX_OUT>>) {
    let ky = i32(ty) + i32(P) - (i32(a) - i32(b4_lead())) * i32(S);
    if (ky < 0 || ky >= i32(K)) { return; }
    let lq4 = 4 * i32(b4_lq());
    for (var tx = 4u * q; tx < 4u * q + 4u; tx++) {
        // First window whose span reaches tx: ceil((tx + P - K + 1) / S) + 4*LQ, the
        // numerator made non-negative (4*LQ*S >= L*S > K - 1 - P - S).
        let b0 = (tx + P + S + 4u * b4_lq() * S - K) / S;
        for (var d = 0u; d < (K - 1u) / S + 1u; d++) {
            let b = i32(b0 + d);
            let kx = i32(tx + P) - (b - lq4) * i32(S);
            if (b < i32(4u * b4_quads()) && kx >= 0 && kx < i32(K)) {
                let wq = u32(b) / 4u;
                let c = u32(b) % 4u;
                let arg = ((*r).w[wq] >> (8u * c)) & 0xffu;
                (*acc)[tx] += select(0.0, (*r).g[wq][c], arg == u32(ky) * K + u32(kx));
            }
        }
    }
}

// backward4_gather over the whole strip width (TW <= 16), one call per 4 columns: NIR
// unrolls a loop only while its unrolled size stays small, and calls are inlined whole.
fn backward4_gather_row(a: u32, ty: u32, r: ptr<function, Windows4>,
                        acc: ptr<function, array<f32, MAX_OUT>>) {
    backward4_gather(a, ty, 0u, r, acc);
    if (TW > 4u) { backward4_gather(a, ty, 1u, r, acc); }
    if (TW > 8u) { backward4_gather(a, ty, 2u, r, acc); }
    if (TW > 12u) { backward4_gather(a, ty, 3u, r, acc); }
}

// d_x row ih of the strip += acc, as vec4s.
fn backward4_add(t: Work, s: BackwardStrip, ih: u32, acc: ptr<function, array<f32, MAX_OUT>>) {
    let db = (p.d_x.offset + t.n * p.d_x.batch_stride + (t.c * p.h + ih) * p.w + s.iw0) / 4u;
    for (var q = 0u; q < TW / 4u; q++) {
        if (s.iw0 + 4u * q < p.w) {
            let j = 4u * q;
            bwd4_d_x[db + q] += vec4<f32>((*acc)[j], (*acc)[j + 1u], (*acc)[j + 2u],
                                          (*acc)[j + 3u]);
        }
    }
}

@compute @workgroup_size(WG)
fn backward4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let t = work(wg, nwg, li);
    if (!t.ok) { return; }
    let iw0 = t.seg * TW;
    let s = BackwardStrip(
        p.y.offset + t.n * p.y.batch_stride + t.c * p.oh * p.ow,
        t.plane * p.oh * p.idx_row,
        i32(iw0 / S) - 4 * i32(b4_lq()),
        iw0,
    );
    // Step i covers d_x rows (first + i) * S ..; its window row a is oh0 + i + a.
    let first = t.row * p.chunks;
    let oh0 = i32(first) - i32(b4_lead());
    let rows = b4_rows();
    var r0: Windows4;
    var r1: Windows4;
    var r2: Windows4;
    var r3: Windows4;
    if (rows > 1u) { backward4_load(s, oh0, &r0); }
    if (rows > 2u) { backward4_load(s, oh0 + 1, &r1); }
    if (rows > 3u) { backward4_load(s, oh0 + 2, &r2); }
    var acc: array<f32, MAX_OUT>;
    for (var i = 0u; i < p.chunks; i++) {
        let ih0 = (first + i) * S;
        if (ih0 >= p.h) { break; }
        let last = oh0 + i32(i + rows - 1u);
        switch rows {
            case 1u: { backward4_load(s, last, &r0); }
            case 2u: { backward4_load(s, last, &r1); }
            case 3u: { backward4_load(s, last, &r2); }
            default: { backward4_load(s, last, &r3); }
        }
        for (var ty = 0u; ty < S; ty++) {
            if (ih0 + ty >= p.h) { break; }
            for (var j = 0u; j < TW; j++) { acc[j] = 0.0; }
            backward4_gather_row(0u, ty, &r0, &acc);
            if (rows > 1u) { backward4_gather_row(1u, ty, &r1, &acc); }
            if (rows > 2u) { backward4_gather_row(2u, ty, &r2, &acc); }
            if (rows > 3u) { backward4_gather_row(3u, ty, &r3, &acc); }
            backward4_add(t, s, ih0 + ty, &acc);
        }
        r0 = r1;
        r1 = r2;
        r2 = r3;
    }
}
