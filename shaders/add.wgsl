// Element-wise add, the residual sum of a ResNet block, with an optional fused ReLU.
//   forward:            y = a + b                 [then max(y, 0) if RELU]
//   accumulate_forward: y = y + b                 [then max(y, 0) if RELU]   (in place:
//                       BN writes y, this adds the shortcut: BN + add + ReLU, no extra buffer)
//   backward:           g = d_y * [y > 0 if RELU]  (ReLU'(0) = 0; y > 0 exactly when a + b > 0)
//                       d_a += g,  d_b += g
// One invocation per element (vec4 of elements in the `_v4` entry points). Every tensor
// may be a channel-slice view (see View); views and numel are in units of the entry point.

override WG: u32 = 256;
override RELU: bool = false;

struct Params {
    a: View,   // a (forward), d_a (backward)
    b: View,   // b (forward, accumulate), d_b (backward)
    y: View,   // y (forward, accumulate, backward)
    d_y: View, // d_y (backward)
    numel: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn act(v: vec4<f32>) -> vec4<f32> {
    if (RELU) { return max(v, vec4(0.0)); }
    return v;
}

fn mask(g: vec4<f32>, y: vec4<f32>) -> vec4<f32> {
    if (RELU) { return select(vec4(0.0), g, y > vec4(0.0)); }
    return g;
}

// forward bindings
@group(0) @binding(1) var<storage, read> fw_a: array<f32>;           // (N, C, H, W) via p.a
@group(0) @binding(2) var<storage, read> fw_b: array<f32>;           // (N, C, H, W) via p.b
@group(0) @binding(3) var<storage, read_write> fw_y: array<f32>;     // (N, C, H, W) via p.y
@group(0) @binding(1) var<storage, read> fw4_a: array<vec4<f32>>;       // via p.a
@group(0) @binding(2) var<storage, read> fw4_b: array<vec4<f32>>;       // via p.b
@group(0) @binding(3) var<storage, read_write> fw4_y: array<vec4<f32>>; // via p.y

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let v = fw_a[view_index(p.a, i)] + fw_b[view_index(p.b, i)];
    fw_y[view_index(p.y, i)] = act(vec4(v)).x;
}

@compute @workgroup_size(WG)
fn forward_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    fw4_y[view_index(p.y, i)] = act(fw4_a[view_index(p.a, i)] + fw4_b[view_index(p.b, i)]);
}

// accumulate_forward bindings
@group(0) @binding(1) var<storage, read> ac_b: array<f32>;             // (N, C, H, W) via p.b
@group(0) @binding(2) var<storage, read_write> ac_y: array<f32>;       // (N, C, H, W) via p.y
@group(0) @binding(1) var<storage, read> ac4_b: array<vec4<f32>>;       // via p.b
@group(0) @binding(2) var<storage, read_write> ac4_y: array<vec4<f32>>; // via p.y

@compute @workgroup_size(WG)
fn accumulate_forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let yi = view_index(p.y, i);
    ac_y[yi] = act(vec4(ac_y[yi] + ac_b[view_index(p.b, i)])).x;
}

@compute @workgroup_size(WG)
fn accumulate_forward_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let yi = view_index(p.y, i);
    ac4_y[yi] = act(ac4_y[yi] + ac4_b[view_index(p.b, i)]);
}

// backward bindings
@group(0) @binding(1) var<storage, read> bw_y: array<f32>;               // (N, C, H, W) via p.y
@group(0) @binding(2) var<storage, read> bw_d_y: array<f32>;             // (N, C, H, W) via p.d_y
@group(0) @binding(3) var<storage, read_write> bw_d_a: array<f32>;       // (N, C, H, W) via p.a
@group(0) @binding(4) var<storage, read_write> bw_d_b: array<f32>;       // (N, C, H, W) via p.b
@group(0) @binding(1) var<storage, read> bw4_y: array<vec4<f32>>;         // via p.y
@group(0) @binding(2) var<storage, read> bw4_d_y: array<vec4<f32>>;       // via p.d_y
@group(0) @binding(3) var<storage, read_write> bw4_d_a: array<vec4<f32>>; // via p.a
@group(0) @binding(4) var<storage, read_write> bw4_d_b: array<vec4<f32>>; // via p.b

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let g = mask(vec4(bw_d_y[view_index(p.d_y, i)]), vec4(bw_y[view_index(p.y, i)])).x;
    bw_d_a[view_index(p.a, i)] += g;
    bw_d_b[view_index(p.b, i)] += g;
}

@compute @workgroup_size(WG)
fn backward_v4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.numel) { return; }
    let g = mask(bw4_d_y[view_index(p.d_y, i)], bw4_y[view_index(p.y, i)]);
    bw4_d_a[view_index(p.a, i)] += g;
    bw4_d_b[view_index(p.b, i)] += g;
}
