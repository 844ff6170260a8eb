// ReLU.
//   forward:  y = max(x, 0)
//   backward: d_x += d_y * [x > 0]       (ReLU'(0) = 0, as in PyTorch)
// One invocation per element. Every tensor may be a channel-slice view (see View).
//
// Binding convention used by every shader here: binding 0 is the op's uniform; each
// entry point declares its own storage bindings from 1 up, so a file's entry points
// reuse binding numbers with the access (read / read_write) that entry point needs.

override WG: u32 = 256;

struct Params {
    x: View,   // geometry of x
    y: View,   // geometry of y (forward) or d_y (backward)
    d_x: View, // geometry of d_x (backward)
    numel: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// forward bindings
@group(0) @binding(1) var<storage, read> fwd_x: array<f32>;        // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read_write> fwd_y: array<f32>;  // (N, C, H, W) via p.y

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    fwd_y[view_index(p.y, i)] = max(fwd_x[view_index(p.x, i)], 0.0);
}

// backward bindings
@group(0) @binding(1) var<storage, read> bwd_x: array<f32>;         // (N, C, H, W) via p.x
@group(0) @binding(2) var<storage, read> bwd_d_y: array<f32>;       // (N, C, H, W) via p.y
@group(0) @binding(3) var<storage, read_write> bwd_d_x: array<f32>; // (N, C, H, W) via p.d_x

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let g = bwd_d_y[view_index(p.y, i)];
    let di = view_index(p.d_x, i);
    bwd_d_x[di] += select(0.0, g, bwd_x[view_index(p.x, i)] > 0.0);
}

// vec4 variants: the same formulas on vec4 units (every view's offset, batch stride and
// item size are multiples of 4; p's views and numel are then given in vec4 units).
@group(0) @binding(1) var<storage, read> fwd4_x: array<vec4<f32>>;        // (N, C, H, W) / 4 via p.x
@group(0) @binding(2) var<storage, read_write> fwd4_y: array<vec4<f32>>;  // (N, C, H, W) / 4 via p.y

@compute @workgroup_size(WG)
fn forward_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    fwd4_y[view_index(p.y, i)] = max(fwd4_x[view_index(p.x, i)], vec4<f32>(0.0));
}

@group(0) @binding(1) var<storage, read> bwd4_x: array<vec4<f32>>;         // (N, C, H, W) / 4 via p.x
@group(0) @binding(2) var<storage, read> bwd4_d_y: array<vec4<f32>>;       // (N, C, H, W) / 4 via p.y
@group(0) @binding(3) var<storage, read_write> bwd4_d_x: array<vec4<f32>>; // (N, C, H, W) / 4 via p.d_x

@compute @workgroup_size(WG)
fn backward_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let g = bwd4_d_y[view_index(p.y, i)];
    let di = view_index(p.d_x, i);
    bwd4_d_x[di] += select(vec4<f32>(0.0), g, bwd4_x[view_index(p.x, i)] > vec4<f32>(0.0));
}
