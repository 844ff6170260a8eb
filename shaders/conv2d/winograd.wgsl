// 3x3 / stride 1 / padding 1 convolutions by Winograd's minimal filtering F(2x2, 3x3)
// (Lavin & Gray 2016). For each 2x2 output tile t and output channel o:
//   Y[o, t] = A^T ( sum_c U[o, c] ⊙ V[c, t] ) A,   V[c, t] = B^T d[c, t] B,   U[o, c] = G f[o, c] G^T
// with d[c, t] the 4x4 patch of summed channel c under the tile (rows 2ty-1 .. 2ty+2, columns
// 2tx-1 .. 2tx+2, 0 outside the image) and f[o, c] its 3x3 filter:
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
// For each of the 16 positions e of the 4x4 transformed tile the sum over c is a matrix
// product M[e] = U[e] V[e] ([out_c, red_c] x [red_c, tiles]): 16 multiply-adds per tile and
// channel pair instead of the direct form's 36.
//   forward:        d = x', f = w[o, c]               y    = Y + b
//   backward_data:  d = d_y, f = w[c, o] rotated 180   d_x += Y
// Three steps, each a launch: winograd_weight (U, once per pass), winograd_input (V, per
// chunk of images), the 16 products on conv1x1's blocked kernel (V[e] as a 1 x tiles
// image of red_c channels, U[e] as its packed weight), and winograd_output (Y from M).

override WG: u32 = 64;
override PROLOGUE: bool = false;

struct WinogradParams {
    inp: View,          // winograd_input: x (forward) or d_y (backward_data)
    out: View,          // winograd_output: y (forward) or d_x (backward_data)
    n0: u32,            // first image of the chunk
    h: u32,
    w: u32,
    out_c: u32,         // channels written: Cout (forward) or Cin (backward_data)
    red_c: u32,         // channels summed over: Cin (forward) or Cout (backward_data)
    tiles_h: u32,       // ceil(H / 2)
    tiles_w: u32,       // ceil(W / 2)
    tiles: u32,         // tiles of the chunk: images * tiles_h * tiles_w
    t_pad: u32,         // tiles rounded up to 4: the row length of V and M
    accumulate: u32,    // 1: out += Y (backward_data); 0: out = Y + b
    has_bias: u32,
    b_off: u32,
    sc_off: u32,        // prologue scale
    sh_off: u32,        // prologue shift
    w_off: u32,         // winograd_weight: offset of w
    w_out_stride: u32,  // winograd_weight: weight stride of an output channel
    w_red_stride: u32,  // winograd_weight: weight stride of a summed channel
    flip: u32,          // winograd_weight: 1 = rotate the filter by 180 degrees
    total: u32,         // invocations that do work
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> q: WinogradParams;

// Tile t of the chunk as (image in the chunk, tile row, tile column).
fn tile_coords(t: u32) -> vec3<u32> {
    let per_image = q.tiles_h * q.tiles_w;
    let n = t / per_image;
    let r = t - n * per_image;
    let ty = r / q.tiles_w;
    return vec3(n, ty, r - ty * q.tiles_w);
}

// ---------------------------------------------------------------------------------------
// winograd_weight: u[(e * red_c + c) * OCP + o] = (G f[o, c] G^T)[e / 4, e % 4], OCP = out_c
// rounded up to 4 (the extra channels 0): for each e, the packed weight (red_c, OCP) that
// conv1x1 reads. One invocation per (c, o).
@group(0) @binding(1) var<storage, read> ww_w: array<f32>;          // (Cout, Cin, 3, 3) at q.w_off
@group(0) @binding(2) var<storage, read_write> ww_u: array<f32>;    // (16, red_c, OCP)

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
    let plane = q.red_c * ocp;
    for (var i = 0u; i < 4u; i++) {
        let a = gf[3u * i];
        let b = gf[3u * i + 1u];
        let d = gf[3u * i + 2u];
        let at = 4u * i * plane + c * ocp + o;
        ww_u[at] = a;
        ww_u[at + plane] = 0.5 * (a + b + d);
        ww_u[at + 2u * plane] = 0.5 * (a - b + d);
        ww_u[at + 3u * plane] = d;
    }
}

// ---------------------------------------------------------------------------------------
// winograd_input: v[(e * red_c + c) * t_pad + t] = (B^T d[c, t] B)[e / 4, e % 4] for the
// tiles t of the chunk (images q.n0 ..). One invocation per (c, t): neighbouring invocations
// write neighbouring tiles.
@group(0) @binding(1) var<storage, read> wi_in: array<f32>;         // x (N, Cin, H, W) or d_y (N, Cout, H, W) via q.inp
@group(0) @binding(2) var<storage, read> wi_scale: array<f32>;      // (Cin) at q.sc_off, if PROLOGUE
@group(0) @binding(3) var<storage, read> wi_shift: array<f32>;      // (Cin) at q.sh_off, if PROLOGUE
@group(0) @binding(4) var<storage, read_write> wi_v: array<f32>;    // (16, red_c, t_pad)

// One row of V = B^T d B from one row t of B^T d.
fn bt_row(t: vec4<f32>) -> vec4<f32> {
    return vec4(t.x - t.z, t.y + t.z, t.z - t.y, t.y - t.w);
}

// One row of the patch: 4 loads at column indices `cols` of the row starting at `row`
// (clamped into the image), zeroed outside it by `mask` after the prologue.
fn patch_row(row: u32, cols: vec4<u32>, mask: vec4<f32>, scale: f32, shift: f32) -> vec4<f32> {
    var d = vec4(wi_in[row + cols.x], wi_in[row + cols.y], wi_in[row + cols.z], wi_in[row + cols.w]);
    if (PROLOGUE) { d = max(scale * d + shift, vec4(0.0)); }
    return d * mask;
}

@compute @workgroup_size(WG)
fn winograd_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= q.total) { return; }
    let c = e / q.tiles;
    let t = e - c * q.tiles;
    let at_tile = tile_coords(t);
    let n = at_tile.x;
    let ty = at_tile.y;
    let tx = at_tile.z;

    let ih = vec4<i32>(i32(2u * ty) - 1) + vec4(0, 1, 2, 3);
    let iw = vec4<i32>(i32(2u * tx) - 1) + vec4(0, 1, 2, 3);
    let hmax = vec4(i32(q.h) - 1);
    let wmax = vec4(i32(q.w) - 1);
    let rows = vec4<u32>(clamp(ih, vec4(0), hmax)) * q.w;
    let cols = vec4<u32>(clamp(iw, vec4(0), wmax));
    let row_in = select(vec4(0.0), vec4(1.0), (ih >= vec4(0)) & (ih <= hmax));
    let col_in = select(vec4(0.0), vec4(1.0), (iw >= vec4(0)) & (iw <= wmax));
    let plane = q.inp.offset + (q.n0 + n) * q.inp.batch_stride + c * q.h * q.w;
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
    // Rows of B^T d, then each row times B.
    let v = mat4x4(bt_row(d0 - d2), bt_row(d1 + d2), bt_row(d2 - d1), bt_row(d1 - d3));
    let stride = q.red_c * q.t_pad;
    let at = c * q.t_pad + t;
    for (var i = 0u; i < 4u; i++) {
        let row = v[i];
        let base = at + 4u * i * stride;
        wi_v[base] = row.x;
        wi_v[base + stride] = row.y;
        wi_v[base + 2u * stride] = row.z;
        wi_v[base + 3u * stride] = row.w;
    }
}

// ---------------------------------------------------------------------------------------
// winograd_output: the 2x2 tile Y = A^T M A of output channel o at tile t, from
// m[(e * out_c + o) * t_pad + t]; stored with the bias (forward) or added (backward_data).
// One invocation per (o, t).
@group(0) @binding(1) var<storage, read> wo_m: array<f32>;          // (16, out_c, t_pad)
@group(0) @binding(2) var<storage, read> wo_b: array<f32>;          // (Cout) at q.b_off, if q.has_bias
@group(0) @binding(3) var<storage, read_write> wo_out: array<f32>;  // y or d_x via q.out

@compute @workgroup_size(WG)
fn winograd_output(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= q.total) { return; }
    let o = e / q.tiles;
    let t = e - o * q.tiles;
    let at_tile = tile_coords(t);
    let n = at_tile.x;
    let ty = at_tile.y;
    let tx = at_tile.z;

    let stride = q.out_c * q.t_pad;
    let at = o * q.t_pad + t;
    var m: array<vec4<f32>, 4>;   // m[i][j] = M[4 i + j]
    for (var i = 0u; i < 4u; i++) {
        let base = at + 4u * i * stride;
        m[i] = vec4(wo_m[base], wo_m[base + stride], wo_m[base + 2u * stride],
                    wo_m[base + 3u * stride]);
    }
    // s = A^T M (2 x 4), Y = s A (2 x 2).
    let s0 = m[0] + m[1] + m[2];
    let s1 = m[1] - m[2] - m[3];
    let y = vec4(s0.x + s0.y + s0.z, s0.y - s0.z - s0.w, s1.x + s1.y + s1.z, s1.y - s1.z - s1.w);
    var bias = 0.0;
    if (q.has_bias != 0u) { bias = wo_b[q.b_off + o]; }
    let hw = q.h * q.w;
    let base = q.out.offset + (q.n0 + n) * q.out.batch_stride + o * hw;
    for (var k = 0u; k < 4u; k++) {
        let oh = 2u * ty + k / 2u;
        let ow = 2u * tx + k % 2u;
        if (oh >= q.h || ow >= q.w) { continue; }
        let idx = base + oh * q.w + ow;
        if (q.accumulate != 0u) {
            wo_out[idx] += y[k];
        } else {
            wo_out[idx] = y[k] + bias;
        }
    }
}
