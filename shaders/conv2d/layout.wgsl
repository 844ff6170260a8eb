// conv2d data movement around the kernels: weight packing, plane padding and the
// pixel-major copy of d_y; Params in common.wgsl.

// ---------------------------------------------------------------------------------------
// pack_weight (for conv1x1 / conv3x3): wp[(rc * KK + t) * OCP + oc] = w[oc, rc, tap t] with
// OCP = out_c rounded up to a multiple of 4 (the extra channels are 0), the tap rotated by
// 180 degrees when p.flip (backward_data). The weights of 4 consecutive output channels are
// then one aligned vec4: lavapipe pays per load instruction, uniform or not, so one vec4 load
// replaces 4 scalar ones.
@group(0) @binding(1) var<storage, read> pw_w: array<f32>;          // (Cout, Cin, KH, KW) at p.w_off
@group(0) @binding(2) var<storage, read_write> pw_out: array<f32>;  // (red_c * KH*KW, OCP)

@compute @workgroup_size(WG)
fn pack_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    let kk = p.kh * p.kw;
    let ocp = (p.out_c + 3u) / 4u * 4u;
    let rt = e / ocp;
    let oc = e - rt * ocp;
    let rc = rt / kk;
    let t = rt - rc * kk;
    var v = 0.0;
    if (oc < p.out_c) {
        let tap = select(t, kk - 1u - t, p.flip != 0u);
        v = pw_w[p.w_off + oc * p.w_out_stride + rc * p.w_red_stride + tap];
    }
    pw_out[e] = v;
}

// ---------------------------------------------------------------------------------------
// repad: copies channel planes between plane sizes, so that convolutions whose H*W is not a
// multiple of 4 can run the vec4 kernels on zero-padded copies:
//   out[n, c, e] (+)= (e < P_in ? inp[n, c, e] : 0)   for e < P_out
// p.cin = C, p.h = P_in, p.w = P_out (floats per channel plane), p.total = N * C * P_out,
// p.accumulate: add instead of overwrite. One invocation per output element.
@group(0) @binding(1) var<storage, read> rp_in: array<f32>;           // (N, C, P_in) via p.inp
@group(0) @binding(2) var<storage, read_write> rp_out: array<f32>;    // (N, C, P_out) via p.out

@compute @workgroup_size(WG)
fn repad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    let plane = e / p.w;
    let q = e - plane * p.w;
    let n = plane / p.cin;
    let c = plane - n * p.cin;
    var v = 0.0;
    if (q < p.h) {
        v = rp_in[p.inp.offset + n * p.inp.batch_stride + c * p.h + q];
    }
    let o = p.out.offset + n * p.out.batch_stride + c * p.w + q;
    if (p.accumulate != 0u) {
        rp_out[o] += v;
    } else {
        rp_out[o] = v;
    }
}

// ---------------------------------------------------------------------------------------
// to_pixel_major (backward_weight_strided's d_y): out[(n*H*W + q) * CP + c] = inp[n, c, q]
// with CP = C rounded up to 4 (extra channels 0).
// One invocation per (pixel group of 4, channel block of 4): 4 vec4 loads, a 4 x 4
// transpose, 4 vec4 stores. p.red_c = C, p.total = N*H*W/4 * CP/4.
@group(0) @binding(1) var<storage, read> tp_in: array<vec4<f32>>;        // (N, C, H*W/4) via p.inp
@group(0) @binding(2) var<storage, read_write> tp_out: array<vec4<f32>>; // (N*H*W, CP)

@compute @workgroup_size(WG)
fn to_pixel_major(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= p.total) { return; }
    let cp4 = (p.red_c + 3u) / 4u;
    let hw4 = (p.h * p.w) / 4u;
    let g = e / cp4;
    let cb = e - g * cp4;
    let n = g / hw4;
    let base = (p.inp.offset + n * p.inp.batch_stride) / 4u + (g - n * hw4);
    var m = mat4x4<f32>();   // column c: channel 4 cb + c at the 4 pixels
    for (var c = 0u; c < 4u; c++) {
        let ch = 4u * cb + c;
        if (ch < p.red_c) {
            m[c] = tp_in[base + ch * hw4];
        }
    }
    let t = transpose(m);   // column r: the 4 channels at pixel 4 g + r
    for (var r = 0u; r < 4u; r++) {
        tp_out[(4u * g + r) * cp4 + cb] = t[r];
    }
}
