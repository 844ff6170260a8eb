// Strided copy between two views of one shape (the building block of channel concat):
//   copy:  dst[n, i] = src[n, i]     (p.accumulate == 0)
//          dst[n, i] += src[n, i]    (p.accumulate == 1)
// Concat forward copies each input into its channel slice of y (one launch per input, so
// one launch binds two buffers whatever the number of inputs); concat backward adds each
// channel slice of d_y into its d_input.
// One invocation = V elements of one batch item, WG apart, so neighbouring lanes touch
// neighbouring addresses. Grid: 1-D (folded, see Gpu::grid_1d) over (item n, chunk):
// workgroup `wid` copies chunk wid % gx (WG * V elements) of item wid / gx.

override WG: u32 = 64;
override V: u32 = 4;   // elements per invocation

struct Params {
    dst: View,       // geometry of dst
    src: View,       // geometry of src
    n: u32,          // batch items
    gx: u32,         // workgroups per item: ceil(item / (WG * V))
    accumulate: u32, // 0: overwrite, 1: add
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> copy_src: array<f32>;        // (N, ...) via p.src
@group(0) @binding(2) var<storage, read_write> copy_dst: array<f32>;  // (N, ...) via p.dst

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let wid = wg.x + wg.y * nwg.x;
    let n = wid / p.gx;
    if (n >= p.n) { return; }
    let i0 = (wid - n * p.gx) * WG * V + li;
    let sb = p.src.offset + n * p.src.batch_stride;
    let db = p.dst.offset + n * p.dst.batch_stride;
    for (var j = 0u; j < V; j++) {
        let i = i0 + j * WG;
        if (i >= p.src.item) { break; }
        if (p.accumulate != 0u) {
            copy_dst[db + i] += copy_src[sb + i];
        } else {
            copy_dst[db + i] = copy_src[sb + i];
        }
    }
}

// The same copy with vec4 loads and stores, for views whose offsets, batch strides and
// item sizes are all multiples of 4 (p's views are then counted in vec4 units).
@group(0) @binding(1) var<storage, read> copy4_src: array<vec4<f32>>;        // via p.src / 4
@group(0) @binding(2) var<storage, read_write> copy4_dst: array<vec4<f32>>;  // via p.dst / 4

@compute @workgroup_size(WG)
fn copy4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let wid = wg.x + wg.y * nwg.x;
    let n = wid / p.gx;
    if (n >= p.n) { return; }
    let i0 = (wid - n * p.gx) * WG * V + li;
    let sb = p.src.offset + n * p.src.batch_stride;
    let db = p.dst.offset + n * p.dst.batch_stride;
    for (var j = 0u; j < V; j++) {
        let i = i0 + j * WG;
        if (i >= p.src.item) { break; }
        if (p.accumulate != 0u) {
            copy4_dst[db + i] += copy4_src[sb + i];
        } else {
            copy4_dst[db + i] = copy4_src[sb + i];
        }
    }
}
