// Ceiling kernels for the benchmarks: what the adapter can do at best.
//   fma_loop:  each invocation runs ITERS iterations of 8 independent FMA chains in
//              registers (no memory traffic but one store): FLOP/s ceiling,
//              flops = invocations * ITERS * 8 chains * 4 lanes * 2.
//   copy_vec4: dst[i] = src[i] over vec4s: bandwidth ceiling, bytes = 2 * 16 * n.

override WG: u32 = 256;
override ITERS: u32 = 512;

struct Params {
    n: u32,        // vec4 elements (copy) or invocations (fma)
    seed: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read_write> fma_out: array<vec4<f32>>;  // (n,)

@compute @workgroup_size(WG)
fn fma_loop(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.n) { return; }
    let s = p.seed + f32(i) * 1e-9;
    var a0 = vec4<f32>(s, s + 1.0, s + 2.0, s + 3.0);
    var a1 = a0 + 0.1; var a2 = a0 + 0.2; var a3 = a0 + 0.3;
    var a4 = a0 + 0.4; var a5 = a0 + 0.5; var a6 = a0 + 0.6; var a7 = a0 + 0.7;
    let m = vec4<f32>(0.9999);
    let c = vec4<f32>(1e-4);
    for (var k = 0u; k < ITERS; k++) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c); a3 = fma(a3, m, c);
        a4 = fma(a4, m, c); a5 = fma(a5, m, c); a6 = fma(a6, m, c); a7 = fma(a7, m, c);
    }
    fma_out[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

@group(0) @binding(1) var<storage, read> copy_src: array<vec4<f32>>;        // (n,)
@group(0) @binding(2) var<storage, read_write> copy_dst: array<vec4<f32>>;  // (n,)

@compute @workgroup_size(WG)
fn copy_vec4(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = linear_id(wg, nwg, li, WG);
    if (i >= p.n) { return; }
    copy_dst[i] = copy_src[i];
}
