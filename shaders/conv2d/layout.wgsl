// conv2d data movement around the kernels: weight packing, plane padding and the
// pixel-major copy of d_y.

struct LayoutParams {
    inp: View,          // repad, to_pixel_major: the tensor read
    out: View,          // repad: the tensor written
    total: u32,         // invocations that do work
    channels: u32,      // repad: C; to_pixel_major: C
    plane_in: u32,      // repad: P_in; to_pixel_major: H*W
    plane_out: u32,     // repad: P_out
    accumulate: u32,    // repad: add instead of overwrite
    out_c: u32,         // pack_weight: output channels of the pass (columns of the packed weight)
    kk: u32,            // pack_weight: KH*KW
    w_off: u32,         // pack_weight: offset of w
    w_out_stride: u32,  // pack_weight: weight stride of an output channel
    w_red_stride: u32,  // pack_weight: weight stride of a summed channel
    flip: u32,          // pack_weight: 1 = rotate the kernel by 180 degrees
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> pl: LayoutParams;

// ---------------------------------------------------------------------------------------
// pack_weight (for conv1x1 / conv3x3): wp[(rc * KK + t) * OCP + oc] = w[oc, rc, tap t] with
// OCP = out_c rounded up to a multiple of 4 (the extra channels are 0), the tap rotated by
// 180 degrees when pl.flip (backward_data). The weights of 4 consecutive output channels are
// then one aligned vec4: lavapipe pays per load instruction, uniform or not, so one vec4 load
// replaces 4 scalar ones.
@group(0) @binding(1) var<storage, read> pw_w: array<f32>;          // (Cout, Cin, KH, KW) at pl.w_off
@group(0) @binding(2) var<storage, read_write> pw_out: array<f32>;  // (summed channels * KH*KW, OCP)

@compute @workgroup_size(WG)
fn pack_weight(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= pl.total) { return; }
    let kk = pl.kk;
    let ocp = (pl.out_c + 3u) / 4u * 4u;
    let rt = e / ocp;
    let oc = e - rt * ocp;
    let rc = rt / kk;
    let t = rt - rc * kk;
    var v = 0.0;
    if (oc < pl.out_c) {
        let tap = select(t, kk - 1u - t, pl.flip != 0u);
        v = pw_w[pl.w_off + oc * pl.w_out_stride + rc * pl.w_red_stride + tap];
    }
    pw_out[e] = v;
}

// ---------------------------------------------------------------------------------------
// repad: copies channel planes between plane sizes, so that convolutions whose H*W is not a
// multiple of 4 can run the vec4 kernels on zero-padded copies:
//   out[n, c, e] (+)= (e < P_in ? inp[n, c, e] : 0)   for e < P_out
// P_in, P_out: floats per channel plane; pl.total = N * C * P_out. One invocation per
// output element.
@group(0) @binding(1) var<storage, read> rp_in: array<f32>;           // (N, C, P_in) via pl.inp
@group(0) @binding(2) var<storage, read_write> rp_out: array<f32>;    // (N, C, P_out) via pl.out

@compute @workgroup_size(WG)
fn repad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= pl.total) { return; }
    let plane = e / pl.plane_out;
    let q = e - plane * pl.plane_out;
    let n = plane / pl.channels;
    let c = plane - n * pl.channels;
    var v = 0.0;
    if (q < pl.plane_in) {
        v = rp_in[pl.inp.offset + n * pl.inp.batch_stride + c * pl.plane_in + q];
    }
    let o = pl.out.offset + n * pl.out.batch_stride + c * pl.plane_out + q;
    if (pl.accumulate != 0u) {
        rp_out[o] += v;
    } else {
        rp_out[o] = v;
    }
}

// ---------------------------------------------------------------------------------------
// to_pixel_major (backward_weight_strided's d_y): out[(n*H*W + q) * CP + c] = inp[n, c, q]
// with CP = C rounded up to 4 (extra channels 0).
// One invocation per (pixel group of 4, channel block of 4): 4 vec4 loads, a 4 x 4
// transpose, 4 vec4 stores. pl.total = N*H*W/4 * CP/4.
@group(0) @binding(1) var<storage, read> tp_in: array<vec4<f32>>;        // (N, C, H*W/4) via pl.inp
@group(0) @binding(2) var<storage, read_write> tp_out: array<vec4<f32>>; // (N*H*W, CP)

@compute @workgroup_size(WG)
fn to_pixel_major(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let e = linear_id(wg, nwg, li, WG);
    if (e >= pl.total) { return; }
    let cp4 = (pl.channels + 3u) / 4u;
    let hw4 = pl.plane_in / 4u;
    let g = e / cp4;
    let cb = e - g * cp4;
    let n = g / hw4;
    let base = (pl.inp.offset + n * pl.inp.batch_stride) / 4u + (g - n * hw4);
    var m = mat4x4<f32>();   // column c: channel 4 cb + c at the 4 pixels
    for (var c = 0u; c < 4u; c++) {
        let ch = 4u * cb + c;
        if (ch < pl.channels) {
            m[c] = tp_in[base + ch * hw4];
        }
    }
    let t = transpose(m);   // column r: the 4 channels at pixel 4 g + r
    for (var r = 0u; r < 4u; r++) {
        tp_out[(4u * g + r) * cp4 + cb] = t[r];
    }
}
