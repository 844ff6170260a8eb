// Ceiling kernels for the benchmarks: what the adapter can do at best.
//   fma_loop:  each invocation runs ITERS steps of 3 independent vec4 FMA chains in
//              registers (no memory traffic but one store): FLOP/s ceiling,
//              flops = invocations * ITERS * 3 chains * 4 lanes * 2. The loop body does
//              16 steps: on lavapipe a loop iteration has a fixed cost of the order of
//              100 vec4 FMAs, and a body of one step of 8 chains measured the loop (about
//              24 GFLOP/s on the 2-core test machine, against about 50 for this one).
//              3 chains (12 SIMD registers on an 8-wide CPU) stay in registers.
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
    var a1 = a0 + 0.1; var a2 = a0 + 0.2;
    let m = vec4<f32>(0.9999);
    let c = vec4<f32>(1e-4);
    for (var k = 0u; k < ITERS; k += 16u) {
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
        a0 = fma(a0, m, c); a1 = fma(a1, m, c); a2 = fma(a2, m, c);
    }
    fma_out[i] = a0 + a1 + a2;
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
