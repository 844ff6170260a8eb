// Global average pooling over the spatial dimensions:
//   forward:  y[n,c] = (1 / (H*W)) * sum_{h,w} x[n,c,h,w]   (sequential sum in row-major
//             order inside one invocation: deterministic, no atomics)
//   backward: d_x[n,c,h,w] += d_y[n,c] / (H*W)
// Forward: one invocation = one (n, c) plane; backward: one invocation = one d_x element,
// with a folded 1-D grid over (item n, chunk): workgroup `wid` covers elements
// [(wid % gx) * WG, +WG) of batch item wid / gx.
// x and d_x may be channel-slice views (see View); y and d_y are contiguous (N, C).

override WG: u32 = 64;

struct Params {
    x: View,       // geometry of x (forward) or d_x (backward)
    y_offset: u32, // first element of y (forward) or d_y (backward)
    planes: u32,   // N * C
    c: u32,        // channels C
    hw: u32,       // H * W
    inv_hw: f32,   // 1 / (H * W)
    gx: u32,       // backward: workgroups per batch item, ceil(C * H * W / WG)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;        // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;  // (N, C) contiguous from p.y_offset

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.planes) { return; }
    let n = i / p.c;
    let base = p.x.offset + n * p.x.batch_stride + (i - n * p.c) * p.hw;
    var sum = 0.0;
    for (var j = 0u; j < p.hw; j++) {
        sum += fwd_x[base + j];
    }
    fwd_y[p.y_offset + i] = sum * p.inv_hw;
}

// backward bindings
@group(0) @binding(1) var<storage, read> bwd_d_y: array<f32>;        // (N, C) contiguous from p.y_offset
@group(0) @binding(2) var<storage, read_write> bwd_d_x: array<f32>;  // (N, C, H, W) via p.x

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let wid = wg.x + wg.y * nwg.x;
    let n = wid / p.gx;
    let i = (wid - n * p.gx) * WG + li;  // element inside batch item n
    if (i >= p.x.item || n * p.c >= p.planes) { return; }
    let c = i / p.hw;
    bwd_d_x[p.x.offset + n * p.x.batch_stride + i] += bwd_d_y[p.y_offset + n * p.c + c] * p.inv_hw;
}
