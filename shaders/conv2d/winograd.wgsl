// 3x3 / stride 1 / padding 1 convolutions by Winograd's minimal filtering F(2x2, 3x3)
// (Lavin & Gray 2016). For each 2x2 output tile and output channel o:
//   Y = A^T [ sum_c U[o,c] ⊙ V[c] ] A,   V[c] = B^T d[c] B,   U[o,c] = G f[o,c] G^T
// with d[c] the 4x4 patch of summed channel c under the tile (rows 2ty-1 .. 2ty+2, columns
// 2tx-1 .. 2tx+2, 0 outside the image) and f[o,c] its 3x3 filter:
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
// 16 multiply-adds per tile and channel pair instead of 36.
//   forward:        d = x', f = w[o, c]              y    = Y + b
//   backward_data:  d = d_y, f = w[c, o] rotated 180  d_x += Y
// winograd_weight computes U once per launch; winograd_3x3 computes V on the fly, so nothing
// but U is stored. One invocation owns one tile x CH_TILE output channels (the workgroup's
// channels, so its U loads are workgroup-uniform vec4s of 4 channels).

override WG: u32 = 64;
override CH_TILE: u32 = 8;      // 4 or 8
override PROLOGUE: bool = false;

struct WinogradParams {
    inp: View,          // d: x (forward) or d_y (backward_data)
    out: View,          // y (forward) or d_x (backward_data)
    n: u32,
    h: u32,
    w: u32,
    out_c: u32,         // channels written: Cout (forward) or Cin (backward_data)
    red_c: u32,         // channels summed over: Cin (forward) or Cout (backward_data)
    tiles_h: u32,       // ceil(H / 2)
    tiles_w: u32,       // ceil(W / 2)
    tiles: u32,         // N * tiles_h * tiles_w
    accumulate: u32,    // 1: out += Y (backward_data); 0: out = Y + b
    has_bias: u32,
    b_off: u32,
    sc_off: u32,        // prologue scale
    sh_off: u32,        // prologue shift
    w_off: u32,         // winograd_weight: offset of w
    w_out_stride: u32,  // winograd_weight: weight stride of an output channel
    w_red_stride: u32,  // winograd_weight: weight stride of a summed channel
    flip: u32,          // winograd_weight: 1 = rotate the filter by 180 degrees
    total: u32,         // winograd_weight: red_c * OCP
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> q: WinogradParams;

// ---------------------------------------------------------------------------------------
// winograd_weight: u[(c * 16 + 4 i + j) * OCP + o] = (G f[o,c] G^T)[i, j], OCP = out_c
// rounded up to 4 (the extra channels are 0), so 4 consecutive output channels are one
// aligned vec4.
@group(0) @binding(1) var<storage, read> ww_w: array<f32>;          // (Cout, Cin, 3, 3) at q.w_off
@group(0) @binding(2) var<storage, read_write> ww_u: array<f32>;    // (red_c * 16, OCP)

@compute @workgroup_size(WG)
fn winograd_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= q.total) { return; }
    let ocp = (q.out_c + 3u) / 4u * 4u;
    let c = e / ocp;
    let o = e - c * ocp;
    var f: array<f32, 9>;
    for (var t = 0u; t < 9u; t++) {
        var v = 0.0;
        if (o < q.out_c) {
            let tap = select(t, 8u - t, q.flip != 0u);
            v = ww_w[q.w_off + o * q.w_out_stride + c * q.w_red_stride + tap];
        }
        f[t] = v;
    }
    // gf = G f (4 x 3), then u = gf G^T (4 x 4).
    var gf: array<f32, 12>;
    for (var j = 0u; j < 3u; j++) {
        let a = f[j];
        let b = f[3u + j];
        let d = f[6u + j];
        gf[j] = a;
        gf[3u + j] = 0.5 * (a + b + d);
        gf[6u + j] = 0.5 * (a - b + d);
        gf[9u + j] = d;
    }
    for (var i = 0u; i < 4u; i++) {
        let a = gf[3u * i];
        let b = gf[3u * i + 1u];
        let d = gf[3u * i + 2u];
        let row = (c * 16u + 4u * i) * ocp + o;
        ww_u[row] = a;
        ww_u[row + ocp] = 0.5 * (a + b + d);
        ww_u[row + 2u * ocp] = 0.5 * (a - b + d);
        ww_u[row + 3u * ocp] = d;
    }
}

// ---------------------------------------------------------------------------------------
// winograd_3x3 bindings (backward_data binds u in place of the bias and prologue vectors).
@group(0) @binding(1) var<storage, read> wi_in: array<f32>;         // x (N, Cin, H, W) or d_y (N, Cout, H, W) via q.inp
@group(0) @binding(2) var<storage, read> wi_u: array<vec4<f32>>;    // (red_c * 16, OCP / 4), winograd_weight
@group(0) @binding(3) var<storage, read> wi_b: array<f32>;          // (Cout) at q.b_off
@group(0) @binding(4) var<storage, read> wi_scale: array<f32>;      // (Cin) at q.sc_off
@group(0) @binding(5) var<storage, read> wi_shift: array<f32>;      // (Cin) at q.sh_off
@group(0) @binding(6) var<storage, read_write> wi_out: array<f32>;  // y (N, Cout, H, W) or d_x via q.out

// acc[j] += u_j * v[j] for the 4 columns j of one row of the tile's transformed patch: each
// column of `acc` holds 4 output channels. Constant indices only, so that the tile stays in
// registers (a loop-indexed array falls back to memory on lavapipe).
fn mac_row(acc: mat4x4<f32>, u: mat4x4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4(fma(u[0], vec4(v.x), acc[0]), fma(u[1], vec4(v.y), acc[1]),
                  fma(u[2], vec4(v.z), acc[2]), fma(u[3], vec4(v.w), acc[3]));
}

// The 4 columns' U (4 channels each) of row i of summed channel c, channel block b.
fn u_row(c: u32, i: u32, blk: u32, ocp4: u32) -> mat4x4<f32> {
    let at = (c * 16u + 4u * i) * ocp4 + blk;
    return mat4x4(wi_u[at], wi_u[at + ocp4], wi_u[at + 2u * ocp4], wi_u[at + 3u * ocp4]);
}

// One row of V = B^T d B from one row t of B^T d.
fn bt_row(t: vec4<f32>) -> vec4<f32> {
    return vec4(t.x - t.z, t.y + t.z, t.z - t.y, t.y - t.w);
}

// One row of the patch: 4 loads at column indices `cols` of row `row` (clamped into the
// image), zeroed outside it by `mask` after the prologue.
fn patch_row(row: u32, cols: vec4<u32>, mask: vec4<f32>, scale: f32, shift: f32) -> vec4<f32> {
    var d = vec4(wi_in[row + cols.x], wi_in[row + cols.y], wi_in[row + cols.z], wi_in[row + cols.w]);
    if (PROLOGUE) { d = max(scale * d + shift, vec4(0.0)); }
    return d * mask;
}

// Adds (backward_data) or stores with the bias (forward) 4 channels' 2x2 output tile
// Y = A^T M A, M's rows m0..m3 (columns: the tile's 4 columns, each 4 channels).
fn store_tile(m0: mat4x4<f32>, m1: mat4x4<f32>, m2: mat4x4<f32>, m3: mat4x4<f32>,
              o0: u32, obase: u32, oh0: u32, ow0: u32) {
    let s0 = m0 + m1 + m2;
    let s1 = m1 - m2 - m3;
    // y[a * 2 + b]: output pixel (oh0 + a, ow0 + b), 4 channels.
    let y = array<vec4<f32>, 4>(s0[0] + s0[1] + s0[2], s0[1] - s0[2] - s0[3],
                                 s1[0] + s1[1] + s1[2], s1[1] - s1[2] - s1[3]);
    let hw = q.h * q.w;
    for (var k = 0u; k < 4u; k++) {
        let o = o0 + k;
        if (o >= q.out_c) { break; }
        var bias = 0.0;
        if (q.has_bias != 0u) { bias = wi_b[q.b_off + o]; }
        for (var e = 0u; e < 4u; e++) {
            let oh = oh0 + e / 2u;
            let ow = ow0 + e % 2u;
            if (oh >= q.h || ow >= q.w) { continue; }
            let at = obase + o * hw + oh * q.w + ow;
            if (q.accumulate != 0u) {
                wi_out[at] += y[e][k];
            } else {
                wi_out[at] = y[e][k] + bias;
            }
        }
    }
}

// Tiles are on (workgroup_id.y, z) and channel tiles on x, as in the register-tiled kernels (block_id, common.wgsl):
// consecutive workgroups read the same input patches for different output channels.
@compute @workgroup_size(WG)
fn winograd_3x3(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let tile = (wg.y + wg.z * nwg.y) * WG + li;
    let live = tile < q.tiles;
    let tc = min(tile, q.tiles - 1u);
    let per_image = q.tiles_h * q.tiles_w;
    let n = tc / per_image;
    let r = tc - n * per_image;
    let ty = r / q.tiles_w;
    let tx = r - ty * q.tiles_w;
    let hw = q.h * q.w;
    let ocp4 = (q.out_c + 3u) / 4u;
    // Channel blocks of 4: b0 and (CH_TILE == 8) b1, clamped for the last tile.
    let b0 = wg.x * (CH_TILE / 4u);
    let b1 = min(b0 + 1u, ocp4 - 1u);

    // The patch: rows 2ty-1 .. 2ty+2 and columns 2tx-1 .. 2tx+2, clamped into the image;
    // the masks zero what lies outside.
    let ih = vec4<i32>(i32(2u * ty) - 1) + vec4(0, 1, 2, 3);
    let iw = vec4<i32>(i32(2u * tx) - 1) + vec4(0, 1, 2, 3);
    let hmax = vec4(i32(q.h) - 1);
    let wmax = vec4(i32(q.w) - 1);
    let rows = vec4<u32>(clamp(ih, vec4(0), hmax)) * q.w;
    let cols = vec4<u32>(clamp(iw, vec4(0), wmax));
    let row_in = select(vec4(0.0), vec4(1.0), (ih >= vec4(0)) & (ih <= hmax));
    let col_in = select(vec4(0.0), vec4(1.0), (iw >= vec4(0)) & (iw <= wmax));
    let base = q.inp.offset + n * q.inp.batch_stride;

    var a0 = mat4x4<f32>();  // block b0, rows 0..3 of M
    var a1 = mat4x4<f32>();
    var a2 = mat4x4<f32>();
    var a3 = mat4x4<f32>();
    var c0 = mat4x4<f32>();  // block b1
    var c1 = mat4x4<f32>();
    var c2 = mat4x4<f32>();
    var c3 = mat4x4<f32>();
    for (var c = 0u; c < q.red_c; c++) {
        let plane = base + c * hw;
        var scale = 1.0;
        var shift = 0.0;
        if (PROLOGUE) {
            scale = wi_scale[q.sc_off + c];
            shift = wi_shift[q.sh_off + c];
        }
        let d0 = patch_row(plane + rows.x, cols, col_in * row_in.x, scale, shift);
        let d1 = patch_row(plane + rows.y, cols, col_in * row_in.y, scale, shift);
        let d2 = patch_row(plane + rows.z, cols, col_in * row_in.z, scale, shift);
        let d3 = patch_row(plane + rows.w, cols, col_in * row_in.w, scale, shift);
        // V = B^T d B: rows of B^T d, then each row times B.
        let v0 = bt_row(d0 - d2);
        let v1 = bt_row(d1 + d2);
        let v2 = bt_row(d2 - d1);
        let v3 = bt_row(d1 - d3);
        a0 = mac_row(a0, u_row(c, 0u, b0, ocp4), v0);
        a1 = mac_row(a1, u_row(c, 1u, b0, ocp4), v1);
        a2 = mac_row(a2, u_row(c, 2u, b0, ocp4), v2);
        a3 = mac_row(a3, u_row(c, 3u, b0, ocp4), v3);
        if (CH_TILE == 8u) {
            c0 = mac_row(c0, u_row(c, 0u, b1, ocp4), v0);
            c1 = mac_row(c1, u_row(c, 1u, b1, ocp4), v1);
            c2 = mac_row(c2, u_row(c, 2u, b1, ocp4), v2);
            c3 = mac_row(c3, u_row(c, 3u, b1, ocp4), v3);
        }
    }
    if (!live) { return; }
    let obase = q.out.offset + n * q.out.batch_stride;
    store_tile(a0, a1, a2, a3, 4u * b0, obase, 2u * ty, 2u * tx);
    if (CH_TILE == 8u && b0 + 1u < ocp4) {
        store_tile(c0, c1, c2, c3, 4u * (b0 + 1u), obase, 2u * ty, 2u * tx);
    }
}
